"""`chexrl plan --gpus N [--nodes M] [--layout colocated|split]`: the one-GPU plan
(chexrl/models/memory_plan.py) applied to each GPU of a multi-GPU layout (chexrl/core/layout.py).

- colocated: every GPU holds a rollout worker and a learner rank; the step's prompts are split over the
  N engines, so each engine's KV cache needs 1/N of the step's sequences; each learner rank's peak is a
  micro-batch's backward, as on one GPU (a rank runs fewer micro-batches, not larger ones).
- split: rollout GPUs hold an engine only (awake throughout, no sleep), learner GPUs a learner rank only.

The learner ranks all-reduce the LoRA gradients once per optimizer step: the flat fp32 buffer the ranks sum
is one more adapter-sized term at the optimizer step, and a ring all-reduce sends 2 (N-1)/N of its bytes
from every rank (the scaling model in docs/deploy.md, 'More than one GPU').
"""

from __future__ import annotations

import math
from dataclasses import replace

from chexrl.core.layout import plan_layout
from chexrl.models.memory_plan import GIB, ModelShape, PlanSettings, StepShape, lora_parameters, plan


def layout_budget(
    shape: ModelShape,
    step: StepShape,
    settings: PlanSettings,
    *,
    layout: str,
    gpus: int,
    nodes: int = 1,
    learners: int | None = None,
) -> dict:
    """Each GPU's budget for `gpus` GPUs over `nodes` nodes; `learners` (split only): the learner GPUs
    among them, default half."""
    workers, learners = _roles(layout, gpus, nodes, learners)
    layout_plan = plan_layout(layout, workers, learners, gpus=True)
    engine_step = replace(step, prompts=math.ceil(step.prompts / workers))
    per_engine = plan(shape, engine_step, settings)  # the engine's share and the learner's peak
    allreduce = lora_parameters(shape, settings.lora_rank) * 4 if learners > 1 else 0
    capacity = int(settings.gpu_gib * GIB)
    if layout == "colocated":
        roles = {"rollout worker + learner rank": _colocated_gpu(per_engine, allreduce)}
    else:
        roles = {
            "rollout worker": {"engine": per_engine["engine"]["share"], "learner": 0},
            "learner rank": {"engine": 0, "learner": per_engine["learner_peak"] + allreduce},
        }
    for role in roles.values():
        role["total"] = role["engine"] + role["learner"]
        role["fits"] = role["total"] <= capacity
    problems = [f"{name}: needs {r['total'] / GIB:.1f} GiB" for name, r in roles.items() if not r["fits"]]
    problems += [p for p in per_engine["problems"] if p.startswith("generation: the KV cache")]
    return {
        "layout": layout,
        "gpus": layout_plan.gpus,
        "nodes": nodes,
        "gpus_per_node": gpus // nodes,
        "rollout_workers": workers,
        "learner_ranks": learners,
        "prompts_per_engine": engine_step.prompts,
        "allreduce_bytes": allreduce,
        # bytes each rank sends (and receives) per optimizer step in a ring all-reduce
        "allreduce_traffic_bytes": int(2 * (learners - 1) / learners * allreduce),
        "per_gpu": roles,
        "fits": not problems,
        "problems": problems,
        "one_gpu_plan": per_engine,
    }


def _roles(layout: str, gpus: int, nodes: int, learners: int | None) -> tuple[int, int]:
    """(rollout workers, learner ranks) of `gpus` GPUs in `layout`; a count that cannot be placed raises
    ValueError naming the fix."""
    if nodes < 1 or gpus < 1 or gpus % nodes:
        raise ValueError(f"--gpus {gpus} over --nodes {nodes}: give a whole number of GPUs per node")
    if layout == "colocated":
        if learners not in (None, gpus):
            raise ValueError("the colocated layout has one learner rank per GPU: leave out --learners")
        return gpus, gpus
    if gpus < 2:
        raise ValueError("the split layout needs at least 2 GPUs (one rollout, one learner)")
    learners = learners or gpus // 2
    if not 1 <= learners < gpus:
        raise ValueError(f"--learners {learners} leaves no rollout GPU of {gpus}: give 1 to {gpus - 1}")
    return gpus - learners, learners


def _colocated_gpu(one_gpu: dict, allreduce: int) -> dict:
    """The one-GPU plan's worst phase, with the all-reduce buffer on the learner side of the training
    phase (the optimizer step runs after the backward's activations are freed, so this is an upper bound)."""
    phases = one_gpu["phases"]
    worst = max(phases.values(), key=lambda p: p["engine"] + p["learner"])
    training = phases["training"]
    if training["engine"] + training["learner"] + allreduce > worst["engine"] + worst["learner"]:
        worst = {"engine": training["engine"], "learner": training["learner"] + allreduce}
    return {"engine": worst["engine"], "learner": worst["learner"]}


def render_layout_table(budget: dict) -> str:
    """The per-GPU budget as plain text (GiB)."""
    g = lambda b: f"{b / GIB:7.2f}"  # noqa: E731
    lines = [
        f"layout {budget['layout']}: {budget['gpus']} GPU(s) on {budget['nodes']} node(s) "
        f"({budget['gpus_per_node']} per node), {budget['rollout_workers']} rollout worker(s), "
        f"{budget['learner_ranks']} learner rank(s); {budget['prompts_per_engine']} prompt(s) per engine",
        "",
        f"{'per GPU':30s} {'engine':>7s} {'learner':>7s} {'total':>7s}  fits",
    ]
    for name, r in budget["per_gpu"].items():
        fits = "yes" if r["fits"] else "NO"
        lines.append(f"{name:30s} {g(r['engine'])} {g(r['learner'])} {g(r['total'])}  {fits}")
    if budget["allreduce_bytes"]:
        lines.append(
            f"gradient all-reduce: {budget['allreduce_bytes'] / 2**20:.1f} MiB per optimizer step, "
            f"{budget['allreduce_traffic_bytes'] / 2**20:.1f} MiB sent by each rank (ring)"
        )
    lines += ["", "fits" if budget["fits"] else "DOES NOT FIT: " + "; ".join(budget["problems"])]
    return "\n".join(lines)


def step_time_model(
    median: dict[str, float],
    *,
    workers: int,
    learners: int,
    adapter_bytes: int,
    link_gb_per_s: float,
    num_iterations: int = 1,
) -> dict[str, float]:
    """Seconds per step with `workers` engines and `learners` ranks, from one GPU's measured step split
    (`chexrl bench step`'s `chexrl.median`: generation, scoring, forward_backward, optimizer,
    weight_sync, other). Generation divides over the engines and forward/backward over the ranks (each
    takes an equal share of the groups); scoring (one evaluator), the optimizer step (every rank steps
    the whole adapter), the weight push (parallel to every worker) and the loop's own time do not divide;
    each optimizer step adds a ring all-reduce of the adapter's fp32 gradients over the slowest link.
    Generation over N engines is an optimistic bound: a small batch decodes at the per-token latency,
    which more engines do not shorten (docs/deploy.md, 'More than one GPU')."""
    allreduce = num_iterations * 2 * (learners - 1) / learners * adapter_bytes / (link_gb_per_s * 1e9)
    parts = {
        "generation": median["generation"] / workers,
        "forward_backward": median["forward_backward"] / learners,
        "allreduce": allreduce,
        "scoring": median["scoring"],
        "optimizer": median["optimizer"],
        "weight_sync": median["weight_sync"],
        "other": median["other"],
    }
    return parts | {"step": sum(parts.values())}
