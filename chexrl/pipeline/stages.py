"""The recipe's stages, each on the same functions the separate commands use (chexrl/commands/): build a
tiny model and synthetic data (demo), draw the data sets, emulated pretraining (demo), teacher traces, LoRA
SFT, GRPO, evaluation in and out of distribution, and the report. A stage reads earlier stages' outputs at
fixed places under the run directory (`RunPaths`) and writes its own; runner.py orders them, skips those that
are up to date and makes their outputs atomic."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from chexrl.config import ChexrlConfig, RecipeConfig
from chexrl.pipeline.manifest import partial, remove
from chexrl.run_files import read_jsonl

SAMPLE_SETS = ("pretrain", "sft", "rl", "id_test", "ood_test", "id_during", "ood_during")


@dataclass(frozen=True)
class RunPaths:
    """Where each stage's outputs live under the run directory."""

    out: Path

    def random_model(self, family: str) -> Path:
        return self.out / "models" / f"random-{family}"

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def samples(self) -> Path:
        return self.out / "samples"

    @property
    def pretrained(self) -> Path:
        return self.out / "models" / "base"

    @property
    def traces(self) -> Path:
        return self.out / "traces" / "sft.jsonl"

    @property
    def sft(self) -> Path:
        return self.out / "sft"

    @property
    def grpo(self) -> Path:
        return self.out / "grpo"

    @property
    def sft_evaluation(self) -> Path:
        return self.out / "sft-evaluation"

    @property
    def evaluation(self) -> Path:
        return self.grpo / "evaluation"

    @property
    def report(self) -> Path:
        return self.grpo / "report"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"


@dataclass
class RunContext:
    """What every stage gets: the configuration, the run's paths and the shared services."""

    cfg: ChexrlConfig
    out: Path
    log: Callable[[str], None] = print
    services: Services = field(init=False)

    def __post_init__(self) -> None:
        self.paths = RunPaths(self.out)
        self.services = Services(self)

    @property
    def recipe(self) -> RecipeConfig:
        assert self.cfg.recipe is not None  # checked where the config is loaded
        return self.cfg.recipe

    def spec(self, text: str) -> str:
        """A dataset spec with '{out}' (the run directory) filled in."""
        return text.replace("{out}", str(self.out))

    def base_model(self) -> str:
        """The checkpoint SFT trains on: the pretrained tiny model, the tiny model, or recipe.model."""
        r = self.recipe
        if r.pretrain:
            return str(self.paths.pretrained)
        if r.tiny_model is not None:
            return str(self.paths.random_model(r.tiny_model.family))
        return resolve_model(r.model or "")

    def samples(self, name: str) -> list:
        from chexrl.data.sampling import load_samples

        return load_samples(self.paths.samples / f"{name}.jsonl")


def resolve_model(model: str) -> str:
    """A local checkpoint directory, or the local-cache snapshot of a Hugging Face id (never downloads)."""
    path = Path(model).expanduser()
    if path.is_dir() or "/" not in model or model.startswith((".", "/", "~")):
        return str(path)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model, local_files_only=True)
    except Exception:  # any miss means: not in the local cache
        return str(path)


class Services:
    """The evaluator and Ray, started when the first stage needs them and stopped at the end of the run."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.evaluator, self.ray_started, self.url = ctx, None, False, None

    def evaluator_url(self) -> str:
        if self.url is None:
            self.url = self.ctx.recipe.evaluator_url or self._start_evaluator()
        return self.url

    def _start_evaluator(self) -> str:
        from services.evaluator.process import EvaluatorProcess

        out = self.ctx.out
        # The evaluator owns the reward settings (a deployed one reads its own --config): hand it this run's
        config = out / "evaluator.yaml"
        config.write_text(yaml.safe_dump({"reward": self.ctx.cfg.reward.model_dump(mode="json")}))
        self.evaluator = EvaluatorProcess(
            out / "evaluator-state", config=config, log=out / "evaluator.log"
        ).start()
        return self.evaluator.url

    def ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"])
        else:  # a bounded object store: vLLM's memory check on the CPU fails next to a large one
            ray.init(
                num_cpus=self.ctx.recipe.ray_num_cpus,
                object_store_memory=512 * 1024**2,
                include_dashboard=False,
                log_to_driver=False,
            )
        self.ray_started = True

    def close(self) -> None:
        if self.ray_started:
            import ray

            ray.shutdown()
            self.ray_started = False
        if self.evaluator is not None:
            self.evaluator.stop()
            self.evaluator = None


# ------------------------------------------------------------------------------------------------ stages


def tiny_model_stage(ctx: RunContext, resume: bool) -> dict:
    from chexrl.models.tiny import build_model_dir

    tiny = ctx.recipe.tiny_model
    built = build_model_dir(tiny.family, partial(ctx.paths.random_model(tiny.family)), seed=tiny.seed)
    return {"preset": built.preset, "family": built.family}


def synth_data_stage(ctx: RunContext, resume: bool) -> dict:
    from chexrl.data.synth import synthesize

    s, data = ctx.recipe.synthetic_data, partial(ctx.paths.data)
    synthesize("mimic", data / "mimic", s.mimic_images, seed=1, size=s.image_size)
    synthesize("chexpert", data / "chexpert", s.chexpert_images, seed=2, size=s.image_size)
    synthesize("nih", data / "nih-site-b", s.nih_images, seed=3, shift=s.nih_shift, size=s.image_size)
    return {}


def draw_sets(ctx: RunContext) -> dict[str, list]:
    """The patient-disjoint, label-stratified training draws and the test sets: the first eval_images of
    each test set are the final test, its last grpo.eval_limit images GRPO's periodic evaluation."""
    from chexrl.data.loaders import load_dataset
    from chexrl.data.sampling import stratified_budget_split

    d = ctx.recipe.data
    pool = load_dataset(ctx.spec(d.train))
    budget = {"pretrain": d.pretrain_images} if d.pretrain_images else {}
    budget |= {"sft": d.sft_images, "rl": d.rl_images}
    sets = stratified_budget_split(pool, budget, seed=d.seed)
    id_all, ood_all = load_dataset(ctx.spec(d.id_test)), load_dataset(ctx.spec(d.ood_test))
    during = ctx.cfg.grpo.eval_limit or 0
    id_held = 0 if d.id_val else during  # images of a test set that GRPO's evaluation takes from its end
    ood_held = 0 if d.ood_val else during
    id_final, ood_final = len(id_all) - id_held, len(ood_all) - ood_held
    if d.eval_images:
        id_final, ood_final = min(id_final, d.eval_images), min(ood_final, d.eval_images)
    if id_final < 1 or ood_final < 1:
        raise ValueError(
            f"grpo.eval_limit ({during}) leaves no final test images in the test sets "
            f"({len(id_all)} {d.id_name}, {len(ood_all)} {d.ood_name} images)"
        )
    sets |= {"id_test": id_all[:id_final], "ood_test": ood_all[:ood_final]}
    sets["id_during"] = during_set(ctx, d.id_val, id_all, during)
    sets["ood_during"] = during_set(ctx, d.ood_val, ood_all, during)
    return sets


def during_set(ctx: RunContext, spec: str | None, test: list, n: int) -> list:
    """GRPO's periodic evaluation set: the first n of its own spec, else the test set's last n."""
    from chexrl.data.loaders import load_dataset

    if not n:
        return []
    return load_dataset(ctx.spec(spec))[:n] if spec else test[len(test) - n :]


def data_stage(ctx: RunContext, resume: bool) -> dict:
    from chexrl.data.sampling import label_rates, save_samples

    sets = draw_sets(ctx)
    folder = partial(ctx.paths.samples)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in SAMPLE_SETS:
        items = sets.get(name, [])
        save_samples(items, folder / f"{name}.jsonl")
        counts[name] = {"images": len(items), "patients": len({s.patient_id for s in items})}
        counts[name]["rates"] = label_rates(items)
    (folder / "summary.json").write_text(json.dumps(counts, indent=2) + "\n")
    ctx.log("  " + ", ".join(f"{k} {v['images']}" for k, v in counts.items()))
    return {"images": {k: v["images"] for k, v in counts.items()}}


def pretrain_stage(ctx: RunContext, resume: bool) -> dict:
    from trainer.pretrain import run_pretrain

    random_dir = ctx.paths.random_model(ctx.recipe.tiny_model.family)
    run_pretrain(ctx.cfg.pretrain, ctx.samples("pretrain"), random_dir, partial(ctx.paths.pretrained))
    return {}


def traces_stage(ctx: RunContext, resume: bool) -> dict:
    """Template or endpoint teacher traces for the SFT draw; resumes from what the file holds."""
    from chexrl.traces.generate import template_traces
    from chexrl.traces.store import jobs_from_samples, rejected_path

    path, t = ctx.paths.traces, ctx.recipe.teacher
    if not resume:
        remove(path)
        remove(rejected_path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    jobs = jobs_from_samples(ctx.samples("sft"))
    if t.kind == "template":
        summary = template_traces(jobs, path, t.format, seed=t.seed)
    else:
        summary = endpoint_traces(ctx, jobs)
    result = summary.as_dict()
    pending = result.get("failed_total", 0) + result.get("cancelled", 0)
    if pending:
        raise RuntimeError(f"traces: {pending} samples still pending (HTTP errors); rerun to ask again")
    return {"accepted": result.get("accepted"), "rejected": result.get("rejected_total")}


def endpoint_traces(ctx: RunContext, jobs: list):
    from chexrl.traces.generate import GenerateConfig, generate_traces

    t = ctx.recipe.teacher
    cfg = GenerateConfig(
        endpoint=t.endpoint,
        model=t.model,
        format=t.format,
        api_key=os.environ.get(t.api_key_env) if t.api_key_env else None,
        concurrency=t.concurrency,
        max_retries=t.max_retries,
        timeout_s=t.timeout_s,
        temperature=t.temperature,
        max_tokens=t.max_tokens,
        seed=t.seed,
    )
    return generate_traces(jobs, ctx.paths.traces, cfg, log=ctx.log)


def sft_stage(ctx: RunContext, resume: bool) -> dict:
    from chexrl.traces.store import read_jsonl as read_traces
    from trainer.sft import run_sft

    result = run_sft(
        ctx.cfg.sft, read_traces(ctx.paths.traces), None, ctx.base_model(), partial(ctx.paths.sft)
    )
    h = result.history
    return {"best_epoch": h.get("best_epoch"), "early_stop_epoch": h.get("early_stop_epoch")}


def grpo_stage(ctx: RunContext, resume: bool) -> dict:
    """GRPO on the merged SFT checkpoint; resumes from the run's latest checkpoint after a kill."""
    from trainer.loop import HeldOutSets, RunData, run_grpo

    run_dir = ctx.paths.grpo
    resume = resume and (run_dir / "checkpoints").is_dir()
    if not resume:
        remove(run_dir)
        remove(ctx.out / "evaluator-state")
    else:
        ctx.log(f"  resuming GRPO from its latest checkpoint in {run_dir / 'checkpoints'}")
    url = ctx.services.evaluator_url()
    ctx.services.ray()
    g, merged = ctx.cfg.grpo, str(ctx.paths.sft / "merged")
    update = {"grpo": g.model_copy(update={"evaluator_url": url, "model": merged, "run_dir": str(run_dir)})}
    if (
        ctx.cfg.rollout is not None
    ):  # the engine serves the merged SFT checkpoint, whatever rollout.model says
        update["rollout"] = ctx.cfg.rollout.model_copy(update={"model": merged})
    cfg = ctx.cfg.model_copy(update=update)
    d, held_out = ctx.recipe.data, None
    if g.eval_limit:  # evaluation during training on the recipe's held-out ID and OOD sets
        held_out = HeldOutSets(
            (f"{d.id_name} (held out)", ctx.samples("id_during")),
            [(f"{d.ood_name} (held out)", ctx.samples("ood_during"))],
        )
    history = run_grpo(cfg, RunData(ctx.samples("rl"), held_out), resume=resume)
    return {"steps_run": len(history), "resumed": resume}


def recipe_test_sets(ctx: RunContext) -> list:
    """The recipe's in-distribution and out-of-distribution test sets, in that order."""
    from chexrl.evaluation.runner import TestSet

    d = ctx.recipe.data
    return [
        TestSet(d.id_name, ctx.spec(d.id_test), tuple(ctx.samples("id_test"))),
        TestSet(d.ood_name, ctx.spec(d.ood_test), tuple(ctx.samples("ood_test"))),
    ]


def evaluate_sft_stage(ctx: RunContext, resume: bool) -> dict:
    """Greedy evaluation of base and SFT, before GRPO: GRPO's baseline, in `sft-evaluation/` (results.md and
    the rest) as soon as SFT is done, and reused when GRPO reruns with another configuration or resumes."""
    from chexrl.evaluation.runner import ModelSpec, write_results

    ctx.services.ray()
    models = [
        ModelSpec("base", ctx.base_model()),
        ModelSpec("sft", str(ctx.paths.sft / "merged"), parent="base"),
    ]
    doc, completions = evaluate_checkpoints(ctx, models, recipe_test_sets(ctx))
    write_results(doc, partial(ctx.paths.sft_evaluation), completions)
    return {}


def evaluate_stage(ctx: RunContext, resume: bool) -> dict:
    """The final GRPO adapter (on the SFT checkpoint) evaluated like base and SFT, and put beside their
    figures: its files (results.json/.md/.csv, per-label table, charts) go to the GRPO run's evaluation/
    folder, where `chexrl report` finds them; figures.json holds each model's headline figures."""
    from chexrl.evaluation.runner import ModelSpec, read_completions, read_results, write_results

    ctx.services.ray()
    earlier = ctx.paths.sft_evaluation
    adapter = str(ctx.paths.grpo / "adapter-final")
    grpo = ModelSpec("grpo", str(ctx.paths.sft / "merged"), adapter=adapter, parent="sft")
    test_sets = recipe_test_sets(ctx)
    doc, completions = evaluate_checkpoints(
        ctx, [grpo], test_sets, earlier=(read_results(earlier), read_completions(earlier))
    )
    out = partial(ctx.paths.evaluation)
    write_results(doc, out, completions)
    names = [m["name"] for m in doc["models"]]
    results = headline_figures(doc, names, test_sets[0].name, test_sets[1].name, ctx.recipe.pass_at_k)
    (out / "figures.json").write_text(json.dumps(results, indent=2) + "\n")
    return {}


def evaluate_checkpoints(ctx: RunContext, models: list, test_sets: list, earlier=None) -> tuple:
    """`models` evaluated greedily with `chexrl evaluate`'s code, on an engine that serves each checkpoint
    as the run's rollout settings say, with the policy's prompt; with recipe.pass_at_k K, Acc@1 against
    Pass@K at the GRPO sampling settings too. Returns (results document, completion records)."""
    from chexrl.config import RolloutConfig
    from chexrl.evaluation.runner import evaluate_models

    cfg, sft_dir = ctx.cfg, str(ctx.paths.sft / "merged")
    rollout = (
        cfg.rollout.model_copy(update={"model": sft_dir})
        if cfg.rollout
        else RolloutConfig(model=sft_dir, max_model_len=ctx.recipe.eval_max_model_len)
    )
    return evaluate_models(
        models,
        test_sets,
        prompts=(cfg.grpo.prompt,),  # the policy's prompt, for every model alike
        max_tokens=cfg.sampling.max_tokens,
        rollout=rollout,
        margin=cfg.grpo.tradeoff_margin,
        samples=ctx.recipe.pass_at_k,
        pass_sampling=cfg.sampling,
        earlier=earlier,
    )


# Acc@1 (greedy) and its sampled counterpart, exact label set and Jaccard (chexrl.core.pass_at_k).
PASS_MEASURES = ("acc_at_1", "pass_at_k", "acc_at_1_jaccard", "pass_at_k_jaccard")


def headline_figures(doc: dict, names: list[str], id_name: str, ood_name: str, k: int | None) -> dict:
    """Per model: macro-F1 in and out of distribution, micro-F1, fail rates, and Acc@1 against Pass@K."""
    from chexrl.core.metrics import EvaluationRecord

    records = [EvaluationRecord.model_validate(e) for e in doc["entries"]]
    metrics = {(r.model, r.dataset): r.metrics for r in records}
    passes = {(e["model"], e["dataset"]): e.get("pass_at_k") for e in doc["entries"]}
    results = {}
    for name in names:
        id_m, ood_m = metrics[name, id_name], metrics[name, ood_name]
        results[name] = {
            "id": id_m.macro.f1,
            "ood": ood_m.macro.f1,
            "id_micro_f1": id_m.micro.f1,
            "ood_micro_f1": ood_m.micro.f1,
            "id_fail_rate": id_m.fail_rate,
            "ood_fail_rate": ood_m.fail_rate,
        }
        if k:
            results[name]["pass_at_k"] = {
                role: {"k": k} | {key: passes[name, test][key]["mean"] for key in PASS_MEASURES}
                for role, test in (("id", id_name), ("ood", ood_name))
            }
    return results


def report_stage(ctx: RunContext, resume: bool) -> dict:
    """The run's generalization report and summary.json: the evaluation's figures, the transfer gap and
    GRPO's mean reward at the start and at the end (from the run's metrics.jsonl, resumed runs included)."""
    from chexrl.demo import environment, reward_first_last, steps_per_pass, transfer_gap
    from chexrl.evaluation.intervals import comparison_summary
    from chexrl.evaluation.report import write_report
    from chexrl.evaluation.runner import read_results
    from chexrl.pipeline.manifest import finished_stages

    p, g = ctx.paths, ctx.cfg.grpo
    results = json.loads((p.evaluation / "figures.json").read_text())
    by_step = {row["step"]: row for row in read_jsonl(p.grpo / "metrics.jsonl")}
    history = [by_step[s] for s in sorted(by_step)]
    write_report(p.grpo, out_dir=partial(p.report))
    summary = {
        **results,
        "transfer_gap": {name: transfer_gap(r["id"], r["ood"]) for name, r in results.items()},
        **reward_first_last(
            history,
            steps_per_pass(len(ctx.samples("rl")), g.prompts_per_step),
            completions=read_jsonl(p.grpo / "completions.jsonl"),
        ),
        "grpo_steps": len(history),
        "comparison": comparison_summary(read_results(p.evaluation)),
        "report": str(p.report / "report.html"),
        "seconds": {  # each stage's time when it last ran
            m["stage"]: m["seconds"] for m in finished_stages(ctx.out)
        },
        "environment": environment(),
    }
    partial(p.summary).write_text(json.dumps(summary, indent=2) + "\n")
    return {}
