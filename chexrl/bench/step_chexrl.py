"""`chexrl bench step`, chexrl's side: the real `trainer.loop.run_grpo` (vLLM rollout actor -> evaluator
/score over HTTP -> Dr. GRPO update in the learner actor -> adapter pushed to the worker) for `warmup +
steps` steps, and the split of each measured step from the loop's own `time/*` metrics and the learner's
`time/forward_backward` and `time/optimizer`.

overhead_fraction = (step - generation - forward_backward - optimizer) / step: the share of a step that is
neither producing rollouts nor training on them (scoring, batch building, Ray calls, weight sync, glue).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

# The per-step split: named parts of `time/step` plus `other` (the rest), which add up to the step.
PARTS = ("generation", "scoring", "forward_backward", "optimizer", "weight_sync", "other")
# What `other` is made of (informational; they add up to `other`).
OTHER_PARTS = ("collate", "learner_call", "sleep_wake", "loop")


def step_split(metrics: dict) -> dict:
    """One step's split from `run_grpo`'s per-step metrics (seconds)."""
    step = metrics["time/step"]
    named = {
        "generation": metrics["time/generation"],
        "scoring": metrics["time/scoring"],
        "forward_backward": metrics["time/forward_backward"],
        "optimizer": metrics["time/optimizer"],
        "weight_sync": metrics["time/weight_sync"],
    }
    other = step - sum(named.values())
    training = metrics["time/training"]
    learner = metrics["time/learner_step"]
    sleep_wake = metrics["time/sleep"] + metrics["time/wake"]
    loop = step - (
        metrics["time/generation"]
        + metrics["time/scoring"]
        + training
        + metrics["time/weight_sync"]
        + sleep_wake
    )
    return {
        "step": step,
        **named,
        "other": other,
        "other_parts": {
            # the processor building the learner's batches (prompt + image encoding, collation)
            "collate": metrics["time/collate"],
            # the learner call minus the learner's own work: Ray task submission, argument transfer, result
            "learner_call": training - learner,
            # putting the engine to sleep for the update and waking it (Ray calls only, where sleep is off)
            "sleep_wake": sleep_wake,
            # the loop's glue between the timed sections, plus the learner's small bookkeeping
            "loop": loop
            + (learner - metrics["time/collate"] - named["forward_backward"] - named["optimizer"]),
        },
        "overhead_fraction": (step - named["generation"] - named["forward_backward"] - named["optimizer"])
        / step,
    }


def summarize_chexrl(splits: list[dict]) -> dict:
    keys = ("step", *PARTS)
    median = {k: float(statistics.median([s[k] for s in splits])) for k in keys}
    mean = {k: float(statistics.fmean([s[k] for s in splits])) for k in keys}
    fractions = [s["overhead_fraction"] for s in splits]
    return {
        "steps": splits,
        "median": median,
        "mean": mean,
        # shares of the mean step: means add up (the parts' medians need not come from one step)
        "mean_share": {k: mean[k] / mean["step"] for k in PARTS},
        "overhead_fraction": float(statistics.median(fractions)),
        "overhead_fraction_mean": float(statistics.fmean(fractions)),
    }


def run_chexrl(
    cfg, model_dir: str, samples: list, work: Path, *, warmup: int, evaluator_url: str | None = None
) -> tuple[list[dict], float]:
    """`run_grpo` for the configured steps; returns (the measured steps' metrics, wall seconds).

    Starts an evaluator unless `evaluator_url` is given, and a local Ray unless one is connected."""
    import shutil

    import ray

    from chexrl.core.prompts import DEFAULT_PROMPT
    from services.evaluator.process import EvaluatorProcess
    from trainer.loop import RunData, run_grpo

    work.mkdir(parents=True, exist_ok=True)
    evaluator = None
    if evaluator_url is None:
        evaluator = EvaluatorProcess(work / "evaluator-state", log=work / "evaluator.log").start()
        evaluator_url = evaluator.url
    scratch = tempfile.mkdtemp(prefix="chexrl-bench-step-", dir=_scratch())  # node-local adapter files
    cfg = cfg.model_copy(
        update={
            "grpo": cfg.grpo.model_copy(
                update={
                    "evaluator_url": evaluator_url,
                    "model": model_dir,
                    "run_dir": str(work / "chexrl-run"),
                    "run_id": "bench-step",
                    "prompt": DEFAULT_PROMPT,
                }
            ),
            "rollout": cfg.rollout.model_copy(update={"adapter_dir": scratch}),
        }
    )
    own_ray = not ray.is_initialized()
    started = time.perf_counter()
    try:
        if own_ray:  # as the demo: logical CPUs so that the worker and learner actors fit on 2 cores
            ray.init(
                num_cpus=4, object_store_memory=512 * 1024**2, include_dashboard=False, log_to_driver=False
            )
        try:
            history = run_grpo(cfg, RunData(samples), progress=False)
        finally:
            if own_ray:
                ray.shutdown()
    finally:
        if evaluator is not None:
            evaluator.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return history[warmup:], time.perf_counter() - started


def _scratch() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
