"""`chexrl evaluate` and `chexrl report` end to end through the real vLLM engine on the tiny Gemma3.

Every test runs the commands in-process on the session's one engine (runner.open_router and the training
loop's RolloutRouter are pointed at it), so the whole file starts no engine of its own:

- models side by side: a base model and the same model with a LoRA adapter, in and out of distribution;
- a prompt ablation (one model, two prompt variants, sampled decoding);
- a real GRPO run (trainer.loop.run_grpo: learner actor, evaluator over HTTP, evaluation during training
  with Acc@1 against Pass@2, grpo.eval_samples), then `chexrl evaluate --run` and `chexrl report` on its
  run directory.

The written JSON, Markdown and CSV must agree with each other and with the evaluator's /evaluate on the
same completions.
"""

import csv
import dataclasses
import io
import json
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import ray
from typer.testing import CliRunner

from chexrl.cli import app
from chexrl.core.schemas import get_schema
from chexrl.evaluation import runner
from chexrl.evaluation.report import write_report
from tests.fixtures.rollout import make_adapter
from tests.test_evaluation_report import md_table

pytestmark = pytest.mark.slow
SCHEMAS = {"cx": "chexpert14", "nih": "nih9"}
SCHEMAS_3 = {**SCHEMAS, "vindr": "vindr9"}


class SharedEngine:
    """The session's router, serving the base model on entry and again on exit. Adapters pushed through it
    get the engine's next version number (a training run counts its own versions from 1)."""

    def __init__(self, router, model_dir: str) -> None:
        self.router, self.model_dir, self.opened = router, model_dir, []
        self._zero = None

    def to_base(self) -> None:
        if self.router.version > 0:  # a zero adapter serves exactly the base model
            self._zero = self._zero or make_adapter(self.model_dir, 0, zero=True)
            self.router.push_adapter(dataclasses.replace(self._zero, version=self.router.version + 1))

    # the router interface the training loop and evaluate_samples use
    def generate(self, prompts, sampling):
        return self.router.generate(prompts, sampling)

    def push_adapter(self, adapter, version=None):
        # the loop pushes the learner's export by reference: fetch it, renumber it for the shared router
        weights = ray.get(adapter) if isinstance(adapter, ray.ObjectRef) else adapter
        return self.router.push_adapter(dataclasses.replace(weights, version=self.router.version + 1))

    def sleep(self) -> None:  # the loop's phases (a no-op where the worker does not sleep)
        self.router.sleep()

    def wake_up(self) -> None:
        self.router.wake_up()

    def info(self) -> list[dict]:  # placement.json records where each worker runs
        return self.router.info()

    @property
    def version(self) -> int:
        return self.router.version

    def shutdown(self) -> None:
        self.to_base()

    @contextmanager
    def open(self, model_dir, rollout):
        """runner.open_router's replacement."""
        self.opened.append(model_dir)
        self.to_base()
        try:
            yield self.router
        finally:
            self.to_base()


@pytest.fixture
def engine(rollout_router, tiny_gemma3_dir, monkeypatch) -> SharedEngine:
    shared = SharedEngine(rollout_router, str(tiny_gemma3_dir))
    monkeypatch.setattr(runner, "open_router", shared.open)
    return shared


def invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def assert_files_agree(out, evaluator) -> dict:
    """results.json's metrics = /evaluate on completions.jsonl, exactly; results.csv holds the same numbers
    at full precision; results.md the side-by-side (or ablation) rows at three decimals."""
    doc = json.loads((out / "results.json").read_text())
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    sizes = {d["name"]: d["n"] for d in doc["datasets"]}
    assert len(completions) == len(doc["systems"]) * sum(sizes.values())
    for e in doc["entries"]:
        items = [
            {"completion": c["completion"], "labels": c["labels"]}
            for c in completions
            if (c["model"], c["prompt"], c["dataset"]) == (e["model"], e["prompt"], e["dataset"])
        ]
        assert len(items) == sizes[e["dataset"]]
        response = httpx.post(
            f"{evaluator.url}/evaluate", json={"schema": SCHEMAS[e["dataset"]], "items": items}, timeout=30
        )
        assert response.status_code == 200 and response.json() == e["metrics"]

    label = {(s["model"], s["prompt"]): s["label"] for s in doc["systems"]}
    rows = {
        (r["system"], r["dataset"]): r for r in csv.DictReader(io.StringIO((out / "results.csv").read_text()))
    }
    assert len(rows) == len(doc["entries"])
    for e in doc["entries"]:
        m, r = e["metrics"], rows[label[e["model"], e["prompt"]], e["dataset"]]
        for avg in ("micro", "macro"):
            for k in ("precision", "recall", "f1"):
                assert float(r[f"{avg}_{k}"]) == m[avg][k]
        assert float(r["fail_rate"]) == m["fail_rate"] and int(r["n"]) == m["n"]
    per_label = list(csv.DictReader(io.StringIO((out / "per_label.csv").read_text())))
    assert len(per_label) == len(doc["systems"]) * sum(14 if d == "cx" else 9 for d in sizes)
    return doc


def test_evaluate_models_side_by_side(
    engine, tiny_gemma3_dir, synth_chexpert_dir, synth_nih_shift_dir, evaluator, tmp_path
):
    from chexrl.models.adapter_io import save_adapter_dir

    model = str(tiny_gemma3_dir)
    adapter_dir = save_adapter_dir(make_adapter(model, 1, seed=7), tmp_path / "adapter")
    out = tmp_path / "eval"
    args = ["evaluate", "--model", f"base={model}", "--model", f"tuned={model}@{adapter_dir}"]
    args += ["--parent", "tuned=base", "--data", f"cx=chexpert:{synth_chexpert_dir}"]
    args += ["--data", f"nih=nih:{synth_nih_shift_dir}", "--limit", "3", "--max-tokens", "16"]
    result = invoke([*args, "--out", str(out)])
    assert engine.opened == [model]  # one engine for both models: the base first, then the adapter pushed

    doc = assert_files_agree(out, evaluator)
    assert doc["kind"] == "comparison" and doc["sampling"] == {"greedy": True, "max_tokens": 16}
    assert [(d["name"], d["role"], d["schema"], d["n"]) for d in doc["datasets"]] == [
        ("cx", "id", "chexpert14", 3),
        ("nih", "ood", "nih9", 3),
    ]
    metrics = {(e["model"], e["dataset"]): e["metrics"] for e in doc["entries"]}
    assert set(metrics) == {("base", "cx"), ("base", "nih"), ("tuned", "cx"), ("tuned", "nih")}
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    texts = {name: [c["completion"] for c in completions if c["model"] == name] for name in ("base", "tuned")}
    assert texts["base"] != texts["tuned"], "the adapter should change the greedy completions"

    # the derived numbers as defined, in every file and on the terminal
    rows = {
        (r["system"], r["dataset"]): r for r in csv.DictReader(io.StringIO((out / "results.csv").read_text()))
    }
    md = (out / "results.md").read_text()
    for name in ("base", "tuned"):
        id_f1, ood_f1 = metrics[name, "cx"]["macro"]["f1"], metrics[name, "nih"]["macro"]["f1"]
        gap = next(g["gap"] for g in doc["transfer_gaps"] if g["system"] == name)
        assert gap == ((ood_f1 - id_f1) / id_f1 if id_f1 else None)
        assert rows[name, "nih"]["transfer_gap"] == ("" if gap is None else str(gap))
        parent = "base" if name == "tuned" else ""
        row = (
            f"| {name} | {parent} | {id_f1:.3f} | {ood_f1:.3f} | {'n/a' if gap is None else f'{gap:+.1%}'} |"
        )
        assert row in md and row in result.output
    change = next(c for c in doc["changes_vs_parent"] if c["dataset"] == "nih")
    assert change["system"] == "tuned" and change["parent"] == "base"
    assert (
        change["fail_rate"]["delta"]
        == metrics["tuned", "nih"]["fail_rate"] - metrics["base", "nih"]["fail_rate"]
    )
    t6 = {r["Category"]: r for r in md_table(md, "nih (OOD): F1 per label (layout of the paper's Table 6)")}
    assert t6["Overall Average (Macro F1)"] == {
        "Category": "Overall Average (Macro F1)",
        "base": f"{metrics['base', 'nih']['macro']['f1']:.3f}",
        "tuned": f"{metrics['tuned', 'nih']['macro']['f1']:.3f}",
    }
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "results.json") in result.output


def test_an_earlier_evaluation_plus_one_model_equals_one_evaluation_of_all(
    engine, tiny_gemma3_dir, synth_chexpert_dir, synth_nih_shift_dir, tmp_path
):
    """What the recipe does: base and SFT before GRPO, then GRPO put beside them. The greedy results and
    completions equal those of one call on all three, intervals included; a different test set is refused.
    (The Pass@K samples come from the engine's seeded generator, so they depend on what it sampled before.)"""
    from chexrl.data.loaders import load_dataset
    from chexrl.evaluation.runner import ModelSpec, TestSet, evaluate_models, read_completions, write_results
    from chexrl.models.adapter_io import save_adapter_dir

    model = str(tiny_gemma3_dir)
    adapters = [save_adapter_dir(make_adapter(model, 1, seed=s), tmp_path / f"a{s}") for s in (3, 4)]
    base, sft = ModelSpec("base", model), ModelSpec("sft", model, adapter=str(adapters[0]), parent="base")
    grpo = ModelSpec("grpo", model, adapter=str(adapters[1]), parent="sft")
    sets = [
        TestSet(
            "cx", f"chexpert:{synth_chexpert_dir}", tuple(load_dataset(f"chexpert:{synth_chexpert_dir}")[:3])
        ),
        TestSet("nih", f"nih:{synth_nih_shift_dir}", tuple(load_dataset(f"nih:{synth_nih_shift_dir}")[:3])),
    ]
    settings = {"max_tokens": 16, "margin": 0.01, "samples": 2, "log": lambda line: None}
    whole, whole_rows = evaluate_models([base, sft, grpo], sets, **settings)
    first, first_rows = evaluate_models([base, sft], sets, **settings)
    write_results(first, tmp_path / "first", first_rows)
    earlier = (
        json.loads((tmp_path / "first" / "results.json").read_text()),
        read_completions(tmp_path / "first"),
    )
    merged, merged_rows = evaluate_models([grpo], sets, **settings, earlier=earlier)

    def greedy(doc: dict) -> dict:
        entries = [{k: v for k, v in e.items() if k != "pass_at_k"} for e in doc["entries"]]
        return {k: v for k, v in doc.items() if k != "seconds"} | {"entries": entries}

    assert greedy(merged) == greedy(whole) and set(merged["seconds"]) == {"base", "sft", "grpo"}
    assert [e.get("pass_at_k", {}).get("k") for e in merged["entries"]] == [2] * 6
    rows = [[r for r in found if "sample" not in r] for found in (merged_rows, whole_rows)]
    assert rows[0] == rows[1] and len(rows[0]) == 3 * 6
    assert sum("sample" in r for r in merged_rows) == 3 * 6 * 2
    with pytest.raises(ValueError, match="evaluate every model again"):
        evaluate_models([grpo], sets[:1], **settings, earlier=earlier)
    with pytest.raises(ValueError, match="parent 'sft' is not one of the models"):
        evaluate_models([grpo], sets, **settings)


def test_prompt_ablation_with_sampling(engine, tiny_gemma3_dir, synth_chexpert_dir, evaluator, tmp_path):
    out = tmp_path / "ablation"
    args = ["evaluate", "--model", f"tiny={tiny_gemma3_dir}", "--data", f"cx=chexpert:{synth_chexpert_dir}"]
    args += ["--prompts", "reasoning_a,narrative", "--limit", "2", "--max-tokens", "8"]
    result = invoke([*args, "--temperature", "0.7", "--top-p", "0.9", "--seed", "3", "--out", str(out)])

    doc = assert_files_agree(out, evaluator)
    assert doc["kind"] == "prompt_ablation" and doc["prompts"] == ["reasoning_a", "narrative"]
    assert [s["label"] for s in doc["systems"]] == ["reasoning_a", "narrative"]
    assert doc["sampling"] == {
        "greedy": False,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 3,
        "max_tokens": 8,
    }
    rows = {r["name"]: r for r in md_table((out / "results.md").read_text(), doc_title(doc))}
    for e in doc["entries"]:
        m, r = e["metrics"], rows[e["prompt"]]
        assert r["Micro-F1"] == f"{m['micro']['f1']:.3f}" and r["Macro-F1"] == f"{m['macro']['f1']:.3f}"
        assert r["Fail Rate"] == f"{m['fail_rate']:.3f}"
    assert rows["reasoning_a"]["Prompt Configuration"] == "Reasoning A (baseline)"
    assert "| Reasoning Narrative | narrative |" in result.output
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def doc_title(doc) -> str:
    return f"Prompt ablation of {doc['systems'][0]['model']} on cx (layout of the paper's Table 1)"


def _ema(values, w=0.95):
    """TensorBoard's debiased EMA, written out again here."""
    last, out = 0.0, []
    for n, x in enumerate(values, start=1):
        last = w * last + (1 - w) * x
        out.append(last / (1 - w**n))
    return out


def test_report_on_a_real_grpo_run(
    engine,
    ray_session,
    evaluator,
    tiny_gemma3_dir,
    synth_mimic_dir,
    synth_chexpert_dir,
    synth_nih_shift_dir,
    tmp_path,
    monkeypatch,
):
    """The training loop writes the run directory (on the session's engine), `chexrl evaluate --run` adds
    the final comparison under RUN/evaluation, and `chexrl report` states the numbers of all three."""
    import trainer.start
    from chexrl.config import ChexrlConfig
    from chexrl.data.loaders import load_dataset
    from trainer.loop import HeldOutSets, RunData, run_grpo

    monkeypatch.setattr(trainer.start, "RolloutRouter", lambda cfg, **kw: engine)
    run_dir = tmp_path / "run"
    cfg = ChexrlConfig.model_validate(
        {
            "sampling": {"n": 2, "max_tokens": 8},
            "grpo": {
                "model": str(tiny_gemma3_dir),
                "run_dir": str(run_dir),
                "run_id": "report-test",
                "evaluator_url": evaluator.url,
                "max_steps": 2,
                "prompts_per_step": 2,
                "save_steps": 2,
                "eval_steps": 1,
                "eval_samples": 2,  # Acc@1 against Pass@2 at every evaluation
                "reward": "hard",
                "micro_batch_size": 4,
                # a margin that must not trigger: no interval of a macro-F1 difference lies below -1
                "stop_when_ood_drops": {"margin": 1.0, "evaluations": 1},
            },
        }
    )
    cx, nih = f"chexpert:{synth_chexpert_dir}", f"nih:{synth_nih_shift_dir}"
    held_out = HeldOutSets(("cx-held", load_dataset(cx)[-2:]), [("nih-held", load_dataset(nih)[-2:])])
    data = RunData(load_dataset(f"mimic:{synth_mimic_dir}")[:4], held_out)
    engine.to_base()  # step 0 evaluates the start: the engine must serve the base model
    history = run_grpo(cfg, data, progress=False)
    assert [h["step"] for h in history] == [1, 2]

    evaluate = ["evaluate", "--run", str(run_dir), "--data", f"cx={cx}", "--data", f"nih={nih}"]
    invoke([*evaluate, "--limit", "2", "--max-tokens", "8"])
    doc = assert_files_agree(run_dir / "evaluation", evaluator)
    selection = json.loads((run_dir / "selection.json").read_text())
    kept = sorted({p["step"] for p in selection.values() if p["checkpoint"]})
    assert [s["label"] for s in doc["systems"]] == ["start", *(f"grpo-step{k}" for k in kept)]
    assert all(s["parent"] == "start" for s in doc["systems"][1:])

    result = invoke(["report", str(run_dir)])
    html_path = run_dir / "report" / "report.html"
    assert str(html_path) in result.output
    assert html_path.read_text().count('src="data:image/png;base64,') == 4  # with the paired intervals
    md = (run_dir / "report" / "report.md").read_text()
    assert "Missing from the run directory" not in md and "run_id: report-test" in md

    evals = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 1, 2]
    rows = {r["step"]: r for r in md_table(md, "Evaluation during training: cx-held (ID) and nih-held (OOD)")}
    for e in evals:
        r = rows[str(e["step"])]
        assert r["ID macro-F1"] == f"{e['id']['macro']['f1']:.3f}"
        assert r["OOD micro-F1"] == f"{e['ood']['micro']['f1']:.3f}"
        assert r["OOD fail rate"] == f"{e['ood']['fail_rate']:.3f}"
        assert r["trade-off warning"] == ("yes" if e["warnings"] else "within noise" if e["notes"] else "")
        assert "stop" not in e and ("vs_start" in e) == (e["step"] > 0)
        for side in ("id", "ood"):
            p = e["pass_at_k"][side]
            assert (p["k"], p["n_samples"], p["n_images"]) == (2, 2, 2)
            assert r[f"{side.upper()} Pass@2"] == f"{p['pass_at_k']['mean']:.3f}"
            assert r[f"{side.upper()} Acc@1"] == f"{p['acc_at_1']['mean']:.3f}"
    picked = {r["policy"]: r for r in md_table(md, "Checkpoint selection")}
    assert {p: int(r["step"]) for p, r in picked.items()} == {p: s["step"] for p, s in selection.items()}
    assert picked["final"]["step"] == "2" and picked["final"]["checkpoint"] == "adapters/step-000002"

    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_step = {e["step"]: e for e in evals}
    for m in logged:  # grpo.eval_samples: the eval/*pass_at_k* scalars of that step's evaluation
        p = by_step[m["step"]]["pass_at_k"]
        assert m["eval/id_pass_at_k"] == p["id"]["pass_at_k"]["mean"]
        assert m["eval/ood_pass_at_k_jaccard"] == p["ood"]["pass_at_k_jaccard"]["mean"]
        assert m["eval/ood_pass_at_k_gap"] == p["ood"]["gap"]["mean"]
    train = {r["metric"]: r for r in md_table(md, "Training metrics")}
    assert {"reward/total", "reward/jaccard", "reward/length_penalty", "completion/length"} <= set(train)
    for key in ("reward/total", "completion/length"):
        values = [m[key] for m in logged]
        assert train[key]["steps"] == "2" and train[key]["last"] == f"{values[-1]:.3f}"
        assert train[key]["last, EMA 0.95"] == f"{_ema(values)[-1]:.3f}"
    side = {r["model"]: r for r in md_table(md, "Models side by side")}
    for e in doc["entries"]:
        role = "ID" if e["dataset"] == "cx" else "OOD"
        cell = side[e["model"]][f"{e['dataset']} ({role}) macro-F1"]
        assert cell == f"{e['metrics']['macro']['f1']:.3f}"
    warnings = [line for line in md.splitlines() if line.startswith("- **WARNING**")]
    assert len(warnings) == sum(len(e["warnings"]) for e in evals) + len(doc["warnings"])
    assert_stops_when_ood_drops(cfg, data, evals)


def assert_stops_when_ood_drops(cfg, data, evals) -> None:
    """grpo.stop_when_ood_drops with a margin that must trigger: the start's record is rewritten as if it
    had answered every OOD image right, so the tiny random model (which fails the answer format) is below it
    beyond noise at its next evaluation. Resumed for 2 more steps, the run stops after one, says why and
    keeps the best-OOD checkpoint, the start (a zero adapter), as its final adapter."""
    from chexrl.config import StopWhenOODDrops
    from chexrl.core.metrics import label_set_metrics
    from chexrl.core.schemas import get_schema
    from chexrl.models.adapter_io import load_adapter_dir
    from trainer.loop import run_grpo

    run_dir = Path(cfg.grpo.run_dir)
    ood = evals[0]["per_image"]["ood"]
    perfect = ood | {"predicted": ood["gold"], "invalid": [False] * len(ood["gold"])}
    metrics = label_set_metrics(ood["gold"], ood["gold"], get_schema(ood["schema"])).as_dict()
    start = evals[0] | {"ood": metrics, "per_image": {"id": evals[0]["per_image"]["id"], "ood": perfect}}
    (run_dir / "evals.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [start, *evals[1:]]))
    stop = StopWhenOODDrops(margin=0.05, evaluations=1)
    grpo = cfg.grpo.model_copy(update={"max_steps": 4, "stop_when_ood_drops": stop})
    history = run_grpo(cfg.model_copy(update={"grpo": grpo}), data, resume=True, progress=False)
    assert [h["step"] for h in history] == [3]  # stopped after the first evaluation past the start
    last = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 3 and last["vs_start"]["ood"]["high"] < -0.05
    assert "grpo.stop_when_ood_drops stopped the run" in last["stop"]
    final = load_adapter_dir(run_dir / "adapter-final", version=1).tensors
    assert all(not t.any() for name, t in final.items() if "lora_B" in name)  # the start: B = 0
    md = (write_report(run_dir).parent / "report.md").read_text()
    assert "## Stopped early" in md and "step 3: out-of-distribution macro-F1 fell" in md


def test_evaluate_two_ood_sites_each_on_its_schema(
    engine, tiny_gemma3_dir, synth_chexpert_dir, synth_nih_shift_dir, synth_vindr_dir, tmp_path
):
    """Two OOD sites with different schemas (nih9, vindr9): each scored on its own labels, each with its
    transfer gap and the gap change's paired interval in results.json and results.md."""
    from chexrl.models.adapter_io import save_adapter_dir

    model = str(tiny_gemma3_dir)
    adapter_dir = save_adapter_dir(make_adapter(model, 1, seed=7), tmp_path / "adapter")
    out = tmp_path / "eval"
    sets = f"cx=chexpert:{synth_chexpert_dir} nih=nih:{synth_nih_shift_dir} vindr=vindr:{synth_vindr_dir}"
    args = f"evaluate --model base={model} --model tuned={model}@{adapter_dir} --parent tuned=base".split()
    args += [a for d in sets.split() for a in ("--data", d)]  # the temporary paths have no spaces
    args += ["--limit", "2", "--max-tokens", "8", "--out", str(out)]
    invoke(args)
    doc = json.loads((out / "results.json").read_text())
    assert [(d["name"], d["role"], d["schema"]) for d in doc["datasets"]] == [
        ("cx", "id", "chexpert14"),
        ("nih", "ood", "nih9"),
        ("vindr", "ood", "vindr9"),
    ]
    for e in doc["entries"]:
        assert list(e["metrics"]["per_label"]) == list(get_schema(SCHEMAS_3[e["dataset"]]).labels)
    assert {(g["system"], g["ood_dataset"]) for g in doc["transfer_gaps"]} == {
        (s, d) for s in ("base", "tuned") for d in ("nih", "vindr")
    }
    assert [(g["system"], g["ood_dataset"]) for g in doc["gap_changes"]] == [
        ("tuned", "nih"),
        ("tuned", "vindr"),
    ]
    assert [t["system"] for t in doc["site_tradeoffs"]] == ["tuned"]
    site_rows = md_table(
        (out / "results.md").read_text(),
        "Transfer gap per site (each site scored on its own schema's labels)",
    )
    assert [(r["model"], r["site"], r["schema"]) for r in site_rows] == [
        ("base", "nih", "nih9 (9 labels)"),
        ("base", "vindr", "vindr9 (9 labels)"),
        ("tuned", "nih", "nih9 (9 labels)"),
        ("tuned", "vindr", "vindr9 (9 labels)"),
    ]
    iv = doc["gap_changes"][1]["interval"]  # None when an ID macro-F1 is 0 (no gap to change)
    cell = f"{iv['delta']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]" if iv else ""
    assert site_rows[3]["gap change vs parent [95%]"] == cell
    gap = next(
        g["gap"] for g in doc["transfer_gaps"] if (g["system"], g["ood_dataset"]) == ("tuned", "vindr")
    )
    assert site_rows[3]["transfer gap"] == ("n/a" if gap is None else f"{gap:+.1%}")
