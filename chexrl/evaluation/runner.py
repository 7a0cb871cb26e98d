"""Evaluate models x prompt variants x test sets through the rollout workers, and write the results.

Completions come from chexrl.evaluation.rollouts.evaluate_samples (the same path as evaluation during GRPO) and
metrics from chexrl.core.metrics.completion_metrics, the function behind the evaluator's /evaluate: the
numbers are /evaluate's. One engine per distinct base checkpoint: the models on it without an adapter are
evaluated first, then each adapter is pushed in turn (an engine cannot drop an adapter again).
With `samples` (Pass@K), each greedy evaluation is followed by n >= K sampled completions per image on the
same engine and adapter, scored by chexrl.core.pass_at_k against the greedy answers (Acc@1).
Needs a connected Ray (ray.init) for the engines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from chexrl.config import EVAL_BATCH_IMAGES, GRPOConfig, RolloutConfig, SamplingConfig
from chexrl.core.metrics import DatasetMetrics, completion_metrics
from chexrl.core.paired import per_image_answers
from chexrl.core.pass_at_k import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, pass_at_k_summary
from chexrl.core.prompts import DEFAULT_PROMPT, get_prompt
from chexrl.core.samples import XraySample
from chexrl.core.schemas import SCHEMAS, get_schema
from chexrl.data.loaders import DatasetSpec, load_dataset
from chexrl.evaluation.comparison import build_results, check_parents
from chexrl.evaluation.render import Image, csv_text, markdown_page
from chexrl.evaluation.rollouts import evaluate_samples, sample_completions
from chexrl.evaluation.sections import results_blocks
from chexrl.evaluation.tables import per_label_csv_table, results_csv_table
from chexrl.models.adapter_io import load_adapter_dir

RESULTS_JSON = "results.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: a checkpoint directory, optionally with a LoRA adapter directory on top, and
    the model it was trained from (`parent`, another ModelSpec's name) for "change against the parent"."""

    name: str
    model: str
    adapter: str | None = None
    parent: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """`[NAME=]DIR[@ADAPTER_DIR]`; NAME defaults to DIR's folder name (plus the adapter's).

        >>> ModelSpec.parse("grpo=runs/sft/merged@runs/grpo/adapter-final")
        ModelSpec(name='grpo', model='runs/sft/merged', adapter='runs/grpo/adapter-final', parent=None)
        >>> ModelSpec.parse("runs/base").name
        'base'
        """
        name, sep, rest = text.partition("=")
        if not sep or "/" in name:
            name, rest = "", text
        model, _, adapter = rest.partition("@")
        if not model:
            raise ValueError(f"bad model {text!r}: expected [NAME=]DIR[@ADAPTER_DIR]")
        if not name:
            name = Path(model).name + (f"+{Path(adapter).name}" if adapter else "")
        return cls(name, model, adapter or None)


@dataclass(frozen=True)
class TestSet:
    name: str
    spec: str
    samples: tuple[XraySample, ...]

    @property
    def schema(self) -> str:
        return self.samples[0].schema


def check_model(m: ModelSpec) -> None:
    """A clear error before any engine starts: the directories exist and look like what they should be."""
    if not (Path(m.model) / "config.json").is_file():
        raise ValueError(f"model {m.name!r}: {m.model} is not a checkpoint directory (no config.json)")
    if m.adapter is not None:
        missing = [f for f in ADAPTER_FILES if not (Path(m.adapter) / f).is_file()]
        if missing:
            raise ValueError(
                f"model {m.name!r}: {m.adapter} is not a PEFT adapter directory (missing {', '.join(missing)})"
            )


def parse_data_arg(text: str) -> tuple[str | None, str]:
    """`[NAME=]SPEC` -> (NAME or None, SPEC). A NAME comes before the spec's first ':'.

    >>> parse_data_arg("id=chexpert:/data/chexpert:valid"), parse_data_arg("nih:/d?out_of_schema=drop")
    (('id', 'chexpert:/data/chexpert:valid'), (None, 'nih:/d?out_of_schema=drop'))
    """
    eq, colon = text.find("="), text.find(":")
    if eq > 0 and (colon < 0 or eq < colon):
        return text[:eq], text[eq + 1 :]
    return None, text


def default_set_name(spec: str) -> str:
    """The dataset and its splits, e.g. "chexpert-valid"."""
    s = DatasetSpec.parse(spec)
    return s.dataset + (f"-{'+'.join(s.splits)}" if s.splits else "")


def load_test_sets(args: Sequence[str], limit: int | None = None) -> list[TestSet]:
    """Load `[NAME=]SPEC` test sets (the first is the in-distribution one), the first `limit` samples of
    each. Errors name the argument at fault."""
    sets: list[TestSet] = []
    for arg in args:
        name, spec = parse_data_arg(arg)
        try:
            name = name or default_set_name(spec)
            samples = load_dataset(spec)
        except (ValueError, OSError) as exc:
            raise ValueError(f"--data {arg!r}: {exc}") from exc
        samples = samples[:limit] if limit else samples
        if not samples:
            raise ValueError(f"--data {arg!r}: no samples")
        taken = {s.name for s in sets}
        base, k = name, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        sets.append(TestSet(name, spec, tuple(samples)))
    return sets


def check_prompts(prompts: Sequence[str]) -> None:
    for name in prompts:
        get_prompt(name)  # raises with the known names


def models_from_run(run_dir: str | Path, start_name: str = "start") -> list[ModelSpec]:
    """The starting checkpoint of a GRPO run (config.yaml's grpo.model) and the GRPO checkpoints to compare
    with it, each with the start as parent: those its selection policies kept (selection.json; named
    `grpo-stepN`), or the final adapter (`grpo-final`, adapter-final) when the run evaluated nothing during
    training."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ValueError(f"--run {run_dir}: no config.yaml (is it a GRPO run directory?)")
    model = ((yaml.safe_load(config.read_text()) or {}).get("grpo") or {}).get("model")
    if not model:
        raise ValueError(f"--run {run_dir}: config.yaml sets no grpo.model")
    specs, seen = [ModelSpec(start_name, model)], set()
    selection = run_dir / "selection.json"
    picks = json.loads(selection.read_text()).values() if selection.is_file() else []
    for pick in sorted(picks, key=lambda p: p["step"]):
        checkpoint = pick.get("checkpoint")
        if checkpoint and checkpoint not in seen:
            seen.add(checkpoint)
            specs.append(ModelSpec(f"grpo-step{pick['step']}", model, str(run_dir / checkpoint), start_name))
    if not seen and (run_dir / "adapter-final").is_dir():
        specs.append(ModelSpec("grpo-final", model, str(run_dir / "adapter-final"), start_name))
    if len(specs) == 1:
        raise ValueError(
            f"--run {run_dir}: no GRPO checkpoint to compare with the start (selection.json names none and "
            "there is no adapter-final: has the run finished?)"
        )
    return specs


@contextmanager
def open_router(model_dir: str, rollout: RolloutConfig | None = None) -> Iterator:
    """A rollout router serving `model_dir` with no adapter, on a whole GPU when the Ray cluster has one
    (no learner shares it here); shut down on exit."""
    import ray

    from rollout_worker.router import RolloutRouter

    cfg = (rollout or RolloutConfig(model=model_dir)).model_copy(update={"model": model_dir})
    router = RolloutRouter(cfg, num_gpus=1.0 if ray.cluster_resources().get("GPU", 0.0) >= 1 else 0.0)
    try:
        yield router
    finally:
        router.shutdown()


class SampledRouter:
    """A router view for sampled (not greedy) evaluation: evaluate_samples asks for greedy decoding, this
    view substitutes the user's sampling settings, one completion per prompt, at the requested length."""

    def __init__(self, router, sampling: SamplingConfig) -> None:
        self.router, self.sampling = router, sampling

    def generate(self, prompts, requested: SamplingConfig):
        return self.router.generate(
            prompts, self.sampling.model_copy(update={"n": 1, "max_tokens": requested.max_tokens})
        )


def _engine_groups(models: Sequence[ModelSpec]) -> list[list[ModelSpec]]:
    """Models grouped by base checkpoint (first-seen order), those without an adapter first."""
    groups: dict[str, list[ModelSpec]] = {}
    for m in models:
        groups.setdefault(m.model, []).append(m)
    return [sorted(g, key=lambda m: m.adapter is not None) for g in groups.values()]


def evaluate_models(
    models: Sequence[ModelSpec],
    test_sets: Sequence[TestSet],
    *,
    prompts: Sequence[str] = (DEFAULT_PROMPT,),
    sampling: SamplingConfig | None = None,
    max_tokens: int,
    batch_size: int = EVAL_BATCH_IMAGES,
    rollout: RolloutConfig | None = None,
    margin: float,
    relative: bool = False,
    samples: int | None = None,
    samples_n: int | None = None,
    pass_sampling: SamplingConfig | None = None,
    router_factory: Callable[[str, RolloutConfig | None], AbstractContextManager] | None = None,
    log: Callable[[str], None] = print,
    earlier: tuple[dict, Sequence[dict]] | None = None,
) -> tuple[dict, list[dict]]:
    """Every model x prompt x test set; returns (results document, completion records).

    `sampling` None (default) is greedy decoding; otherwise its temperature / top-p / seed with one
    completion per image; `max_tokens` caps every completion (callers pass `sampling.max_tokens`'s value
    of their config) and `margin` is the trade-off warning's (`grpo.tradeoff_margin`).
    `router_factory(model_dir, rollout)` yields a router serving that checkpoint, no adapter (`open_router`).

    `samples` K (None: off) adds Acc@1 against Pass@K to each entry ("pass_at_k", chexrl.core.pass_at_k's
    summary): the greedy completions are the Acc@1 answers, and `samples_n` (default K, at least K) more per
    image are sampled at `pass_sampling`'s settings (default: the GRPO sampling's), added to the records with
    their "sample" index.

    `earlier` (results document, completion records) of this function on the same test sets and prompts:
    those models come first as if evaluated in this call (parents of `models`, compared with them).
    """
    known = check_earlier(earlier, models, test_sets, prompts)
    n_samples = check_samples(samples, samples_n, sampling)
    pass_sampling = pass_sampling or SamplingConfig()
    settings = EntrySettings(max_tokens, batch_size, samples, n_samples, pass_sampling)
    entries, completions, seconds = _run_all(
        models, test_sets, prompts, sampling, settings, rollout, router_factory or open_router, log
    )
    if earlier:
        entries = [dict(e) for e in earlier[0]["entries"]] + entries
        completions, seconds = list(earlier[1]) + completions, earlier[0].get("seconds", {}) | seconds
    extra = {}
    if samples:
        extra["pass_at_k_settings"] = pass_at_k_settings(samples, n_samples, pass_sampling, max_tokens)
    doc = build_results(
        datasets=[
            {"name": t.name, "spec": t.spec, "schema": t.schema, "n": len(t.samples)} for t in test_sets
        ],
        models=known + [asdict(m) for m in models],
        prompts=list(prompts),
        entries=entries,
        margin=margin,
        relative=relative,
        sampling=_decoding(sampling) | {"max_tokens": max_tokens},
        seconds=seconds,
        **extra,
    )
    return doc, completions


def check_earlier(earlier, models: Sequence[ModelSpec], test_sets: Sequence[TestSet], prompts) -> list[dict]:
    """The earlier evaluation's models (none without one), checked with `models`: unique names, parents
    among them, the same test sets and prompts; the prompts known and each model's folders there."""
    known = [dict(m) for m in earlier[0]["models"]] if earlier else []
    check_parents(known + [asdict(m) for m in models])
    if earlier:
        check_same_evaluation(earlier[0], test_sets, prompts)
    check_prompts(prompts)
    for m in models:
        check_model(m)
    return known


def check_same_evaluation(doc: dict, test_sets: Sequence[TestSet], prompts: Sequence[str]) -> None:
    """An earlier results document covers the same test sets (names, sources, sizes) and prompts."""
    had = [(d["name"], d["spec"], d["n"]) for d in doc["datasets"]]
    now = [(t.name, t.spec, len(t.samples)) for t in test_sets]
    if had != now or list(doc["prompts"]) != list(prompts):
        raise ValueError(
            f"the earlier evaluation covers test sets {had} and prompts {doc['prompts']}, "
            f"not {now} and {list(prompts)}: evaluate every model again"
        )


def read_completions(out_dir: str | Path) -> list[dict]:
    """The completion records `write_results` wrote to `out_dir`: greedy first, then sampled."""
    rows = []
    for name in ("completions.jsonl", "samples.jsonl"):
        path = Path(out_dir) / name
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def _decoding(sampling: SamplingConfig | None) -> dict:
    """How the main evaluation decoded, for the results document."""
    if sampling is None:
        return {"greedy": True}
    return sampling.model_dump(include={"temperature", "top_p", "seed"}) | {"greedy": False}


def _run_all(
    models, test_sets, prompts, sampling, settings, rollout, factory, log
) -> tuple[list, list, dict]:
    """Every model x prompt x test set, one engine per base checkpoint: (entries, completion records,
    seconds per model)."""
    entries, completions, seconds = [], [], {}
    for group in _engine_groups(models):
        with factory(group[0].model, rollout) as router:
            for m in group:
                t0 = time.perf_counter()
                if m.adapter is not None:
                    router.push_adapter(load_adapter_dir(m.adapter, version=router.version + 1))
                view = router if sampling is None else SampledRouter(router, sampling)
                for prompt in prompts:
                    for ts in test_sets:
                        entry, rows = evaluate_entry(router, view, m.name, prompt, ts, settings, log)
                        entries.append(entry)
                        completions += rows
                seconds[m.name] = time.perf_counter() - t0
    return entries, completions, seconds


@dataclass(frozen=True)
class EntrySettings:
    """How each (model, prompt, test set) is evaluated: completion length, batch, and Pass@K (K, n, sampling)."""

    max_tokens: int
    batch_size: int
    samples: int | None
    n_samples: int
    pass_sampling: SamplingConfig


def evaluate_entry(
    router, view, model: str, prompt: str, ts: TestSet, settings: EntrySettings, log: Callable[[str], None]
) -> tuple[dict, list[dict]]:
    """One model with one prompt on one test set: (results entry, completion records). The entry holds
    /evaluate's metrics, each image's answer ("per_image", for the paired intervals) and, with Pass@K,
    the Acc@1-against-Pass@K summary."""
    out = evaluate_samples(
        view,
        list(ts.samples),
        prompt_name=prompt,
        max_tokens=settings.max_tokens,
        batch_size=settings.batch_size,
    )
    texts = out["completions"]
    golds = [s.labels for s in ts.samples]
    schema = get_schema(ts.schema)
    # the evaluator's own function on the same inputs /evaluate receives
    metrics = completion_metrics(texts, golds, schema)
    key = {"model": model, "prompt": prompt, "dataset": ts.name}
    entry = key | {"metrics": metrics.as_dict(), "per_image": per_image_answers(texts, golds, schema)}
    rows = [
        key | {"index": i, "image_path": s.image_path, "labels": list(s.labels)} | {"completion": text}
        for i, (s, text) in enumerate(zip(ts.samples, texts, strict=True))
    ]
    log(
        f"{model} | {prompt} | {ts.name}: macro-F1 {metrics.macro.f1:.3f}, "
        f"micro-F1 {metrics.micro.f1:.3f}, fail {metrics.fail_rate:.3f} (n={metrics.n})"
    )
    if settings.samples:
        entry["pass_at_k"], sampled_rows = _pass_at_k_entry(router, prompt, ts, texts, settings, key, log)
        rows += sampled_rows
    return entry, rows


def _pass_at_k_entry(router, prompt: str, ts: TestSet, texts, settings: EntrySettings, key: dict, log):
    """Pass@K of one (model, prompt, test set) against its greedy `texts`, and the sampled completion records."""
    k = settings.samples
    sampled = sample_completions(
        router,
        list(ts.samples),
        settings.pass_sampling,
        n=settings.n_samples,
        prompt_name=prompt,
        max_tokens=settings.max_tokens,
        batch_size=settings.batch_size,
    )
    p = pass_at_k_summary(texts, sampled, [s.labels for s in ts.samples], get_schema(ts.schema), k)
    rows = [
        key
        | {"index": i, "image_path": s.image_path, "labels": list(s.labels)}
        | {"sample": j, "completion": text}
        for i, (s, group) in enumerate(zip(ts.samples, sampled, strict=True))
        for j, text in enumerate(group)
    ]
    log(
        f"{key['model']} | {prompt} | {ts.name}: Acc@1 {p['acc_at_1']['mean']:.3f}, "
        f"Pass@{k} {p['pass_at_k']['mean']:.3f} (n={settings.n_samples} samples), "
        f"Acc@1 Jaccard {p['acc_at_1_jaccard']['mean']:.3f}, best-of-{k} "
        f"Jaccard {p['pass_at_k_jaccard']['mean']:.3f}"
    )
    return p, rows


def check_samples(samples: int | None, samples_n: int | None, sampling: SamplingConfig | None) -> int:
    """The number of samples per image for Pass@`samples` (0 when off); errors name the option at fault."""
    if samples is None:
        if samples_n is not None:
            raise ValueError("--samples-n needs --samples K (Pass@K is off)")
        return 0
    if samples < 1:
        raise ValueError(f"--samples must be at least 1, got {samples}")
    n = samples if samples_n is None else samples_n
    if n < samples:
        raise ValueError(f"--samples-n {n} is below --samples {samples}: Pass@K needs n >= K samples")
    if sampling is not None:
        raise ValueError(
            "--samples compares sampling with the greedy answer (Acc@1): the main evaluation must be "
            "greedy (--temperature 0); the samples use the config's sampling settings"
        )
    return n


def pass_at_k_settings(k: int, n: int, sampling: SamplingConfig, max_tokens: int) -> dict:
    """How the Pass@K numbers of a results document were made."""
    return {
        "k": k,
        "n_samples": n,
        **sampling.model_dump(include={"temperature", "top_p", "seed"}),
        "max_tokens": max_tokens,
        "bootstrap": {"level": 0.95, "n_resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
    }


# /evaluate's response (DatasetMetrics): n, fail_rate, micro, macro, per_label
METRIC_KEYS = tuple(DatasetMetrics.model_fields)


def schema_of(metrics: Mapping) -> str:
    """The label schema of a metrics dict: its "schema" key (evaluate_samples' output has one), else the
    schema whose labels its per-label table lists, in order."""
    if metrics.get("schema"):
        return str(metrics["schema"])
    labels = tuple(metrics["per_label"])
    for name, schema in SCHEMAS.items():
        if schema.labels == labels:
            return name
    raise ValueError(f"no known label schema has exactly the labels {list(labels)}")


def results_from_metrics(
    models: Sequence[ModelSpec],
    metrics: Mapping[str, Mapping[str, Mapping]],
    *,
    specs: Mapping[str, str] | None = None,
    prompt: str = DEFAULT_PROMPT,
    margin: float = GRPOConfig.model_fields["tradeoff_margin"].default,
    relative: bool = False,
    **extra,
) -> dict:
    """The results document of `chexrl evaluate` from metrics computed elsewhere (the demo's own
    evaluation, evaluation during training): `metrics[model_name][set_name]` in /evaluate's shape
    (chexrl.evaluation.rollouts.evaluate_samples' output is accepted as is: its "schema" and "completions" keys are
    not copied; a "pass_at_k" summary is, with `pass_at_k_settings=...` in `extra` to describe it, and so
    are per-image answers, "per_image" (comparison.per_image_answers), which give the paired intervals). Test
    sets come in the order of the first model's dict, the in-distribution one first;
    `specs[set_name]` says where a set came from. `extra` (e.g. sampling={"greedy": True, "max_tokens": 64})
    is stored as is. Write the files with `write_results`.
    """
    if not models:
        raise ValueError("at least one model is needed")
    missing = [m.name for m in models if m.name not in metrics]
    if missing:
        raise ValueError(f"no metrics for the models {missing}")
    first = metrics[models[0].name]
    datasets = []
    for name, m in first.items():
        sizes = {other: metrics[other][name]["n"] for other in metrics if name in metrics[other]}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"test set {name!r}: the models were evaluated on different sizes {sizes}")
        spec = (specs or {}).get(name, "")
        datasets.append({"name": name, "spec": spec, "schema": schema_of(m), "n": int(m["n"])})
    entries = [
        {
            "model": model.name,
            "prompt": prompt,
            "dataset": name,
            "metrics": {k: metrics[model.name][name][k] for k in METRIC_KEYS},
        }
        # a "pass_at_k" summary (chexrl.core.pass_at_k.summarize) next to the metrics is kept
        | {
            key: metrics[model.name][name][key]
            for key in ("pass_at_k", "per_image")
            if key in metrics[model.name][name]
        }
        for model in models
        for name in metrics[model.name]
    ]
    return build_results(
        datasets=datasets,
        models=[asdict(m) for m in models],
        prompts=[prompt],
        entries=entries,
        margin=margin,
        relative=relative,
        **extra,
    )


def read_results(out_dir: str | Path) -> dict:
    """The results document `write_results` wrote to `out_dir`."""
    return json.loads((Path(out_dir) / RESULTS_JSON).read_text())


def write_results(doc: dict, out_dir: str | Path, completions: Sequence[dict] = ()) -> dict[str, Path]:
    """results.json, results.md, results.csv, per_label.csv, the chart PNG and completions.jsonl; with
    Pass@K, the Acc@1-against-Pass@K chart (pass_at_k.png) and the sampled completions (samples.jsonl)."""
    from chexrl.evaluation.plots import ablation_png, comparison_png, paired_png, pass_at_k_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / RESULTS_JSON,
        "markdown": out / "results.md",
        "csv": out / "results.csv",
        "per_label_csv": out / "per_label.csv",
    }
    chart_name = "ablation.png" if doc["kind"] == "prompt_ablation" else "comparison.png"
    paths["chart"] = (ablation_png if doc["kind"] == "prompt_ablation" else comparison_png)(
        doc, out / chart_name
    )
    paths["json"].write_text(json.dumps(doc, indent=2) + "\n")
    paths["csv"].write_text(csv_text(results_csv_table(doc)))
    paths["per_label_csv"].write_text(csv_text(per_label_csv_table(doc)))
    chart = Image(chart_name, "chart", paths["chart"].read_bytes())
    pass_chart = pass_at_k_png(doc, out / "pass_at_k.png")
    if pass_chart is not None:
        paths["pass_at_k_chart"] = pass_chart
    title = "chexrl evaluation: " + (
        "prompt ablation" if doc["kind"] == "prompt_ablation" else "models side by side"
    )
    pass_image = (
        Image(pass_chart.name, "Acc@1 against Pass@K", pass_chart.read_bytes()) if pass_chart else None
    )
    paired_chart = paired_png(doc, out / "paired.png")
    paired_image = None
    if paired_chart is not None:
        paths["paired_chart"] = paired_chart
        paired_image = Image(paired_chart.name, "differences with intervals", paired_chart.read_bytes())
    blocks = results_blocks(doc, chart, pass_chart=pass_image, paired_chart=paired_image)
    paths["markdown"].write_text(markdown_page(title, blocks))
    greedy = [c for c in completions if "sample" not in c]
    sampled = [c for c in completions if "sample" in c]
    for key, name, rows in (
        ("completions", "completions.jsonl", greedy),
        ("samples", "samples.jsonl", sampled),
    ):
        if rows:
            paths[key] = out / name
            paths[key].write_text("".join(json.dumps(c) + "\n" for c in rows))
    return paths
