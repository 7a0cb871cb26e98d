"""Online zero-signal filtering of GRPO groups (`grpo.filter_zero_std_groups`; verl's `filter_groups`,
EasyR1's `online_filtering`, OpenRLHF's `dynamic_filtering`).

A group whose rewards are all equal has zero advantage for every completion: it carries no policy
gradient, only the KL term. With the filter on, a step draws rollout batches (prompts_per_step prompts
each, through the same prompt cursor) until it holds `prompts_per_step` groups with signal or has drawn
`max_resample_batches` extra batches; it trains on the first `prompts_per_step` groups with signal in draw
order (verl's truncation: every update sees the same number of groups), or on what it has, or skips the
update when it has none. The cursor is the only state, so a checkpoint's cursor resumes the draws exactly.

This module owns the bookkeeping only: the controller (trainer/loop.py) hands it `draw` and `score`
callables that run inside its timed generation and scoring phases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trainer.records import Group


@dataclass
class StepBatch:
    """What a step drew and what it trains on: `drawn`, every group of every rollout batch of the step
    in draw order (logged: completions.jsonl, the reward and zero-std metrics); `train`, the groups the
    update uses (all of them with the filter off)."""

    drawn: list[Group]
    train: list[Group]
    metrics: dict[str, float] = field(default_factory=dict)


def collect_groups(
    draw: Callable[[int], list[Group]],
    score: Callable[[list[Group]], None],
    *,
    wanted: int,
    max_resample_batches: int | None,
) -> StepBatch:
    """Draw and score rollout batches (`draw(b)` for batch b = 0, 1, ...; `score` completes the groups'
    records) until `wanted` groups have signal or `max_resample_batches` extra batches are spent.
    `max_resample_batches` None: the filter is off, one batch, every group trains (the paper's recipe,
    and no filter/* metrics)."""
    drawn = draw(0)
    score(drawn)
    if max_resample_batches is None:
        return StepBatch(drawn, list(drawn))
    extra = 0
    while sum(g.has_signal for g in drawn) < wanted and extra < max_resample_batches:
        extra += 1
        more = draw(extra)
        score(more)
        drawn = drawn + more
    keep = [g for g in drawn if g.has_signal][:wanted]
    metrics = {
        "filter/resample_batches": float(extra),  # rollout batches drawn beyond the step's first
        "filter/kept_groups": float(len(keep)),  # groups the update trains on
        "filter/skipped_update": float(not keep),  # no group with signal: the step updates nothing
    }
    return StepBatch(drawn, keep, metrics)
