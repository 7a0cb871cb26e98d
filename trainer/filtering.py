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

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chexrl.core.scoring import ScoredCompletion


@dataclass
class StepBatch:
    """What a step drew and what it trains on. `drawn`/`scored`: every rollout batch of the step,
    concatenated prompt-major (logged: completions.jsonl, the reward and zero-std metrics); `train`/
    `train_rewards`: the groups the update uses (all of them with the filter off)."""

    drawn: object  # StepRollouts (trainer/loop.py): prompt_idx, items, examples
    scored: list[ScoredCompletion]  # the evaluator's answers, one per completion
    train: object
    train_rewards: list[float]
    metrics: dict[str, float] = field(default_factory=dict)


def has_signal(rewards: Sequence[float]) -> bool:
    """A group teaches something only if its rewards differ (else every advantage is zero)."""
    return len(set(rewards)) > 1


def collect_groups(
    draw: Callable[[int], object],
    score: Callable[[object], list],
    *,
    group_size: int,
    wanted: int,
    max_resample_batches: int | None,
) -> StepBatch:
    """Draw and score rollout batches (`draw(b)` for batch b = 0, 1, ...) until `wanted` groups have
    signal or `max_resample_batches` extra batches are spent. `max_resample_batches` None: the filter is
    off, one batch, every group trains (the paper's recipe, and no filter/* metrics)."""
    drawn = draw(0)
    scored = list(score(drawn))
    if max_resample_batches is None:
        return StepBatch(drawn, scored, drawn, [s.reward for s in scored])
    extra = 0
    while _count_signal(scored, group_size) < wanted and extra < max_resample_batches:
        extra += 1
        more = draw(extra)
        scored += score(more)
        drawn = _concat(drawn, more)
    keep = [g for g in range(len(drawn.prompt_idx)) if has_signal(_rewards(scored, g, group_size))][:wanted]
    train = _groups(drawn, keep, group_size)
    rows = [k for g in keep for k in range(g * group_size, (g + 1) * group_size)]
    metrics = {
        "filter/resample_batches": float(extra),  # rollout batches drawn beyond the step's first
        "filter/kept_groups": float(len(keep)),  # groups the update trains on
        "filter/skipped_update": float(not keep),  # no group with signal: the step updates nothing
    }
    return StepBatch(drawn, scored, train, [scored[k].reward for k in rows], metrics)


def _rewards(scored: list, group: int, group_size: int) -> list[float]:
    return [s.reward for s in scored[group * group_size : (group + 1) * group_size]]


def _count_signal(scored: list, group_size: int) -> int:
    return sum(has_signal(_rewards(scored, g, group_size)) for g in range(len(scored) // group_size))


def _concat(a, b):
    return dataclasses.replace(
        a, prompt_idx=a.prompt_idx + b.prompt_idx, items=a.items + b.items, examples=a.examples + b.examples
    )


def _groups(rollouts, groups: list[int], group_size: int):
    rows = [k for g in groups for k in range(g * group_size, (g + 1) * group_size)]
    return dataclasses.replace(
        rollouts,
        prompt_idx=[rollouts.prompt_idx[g] for g in groups],
        items=[rollouts.items[k] for k in rows],
        examples=[rollouts.examples[k] for k in rows],
    )
