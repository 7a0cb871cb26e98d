"""The check that the rollout engine serves the policy the learner trains.

Each step the learner recomputes, on its own weights, the log-prob of every token the engine sampled, on
the same distribution the engine reports (the model's own, temperature 1), and logs the mean and the 99th
percentile of |delta log p| per completion token (`rollout/logp_abs_diff`, `rollout/logp_abs_diff_p99`).
With the right adapter the gap is numerical noise and LoRA dropout; a misapplied or stale adapter in the
engine (vLLM #47724, #53888, #42125) puts it far above. `EngineGapWatch` warns once per run, naming the
first step whose gap passes `grpo.engine_logp_diff_warn`.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

MEAN, P99 = "rollout/logp_abs_diff", "rollout/logp_abs_diff_p99"


class EngineGapWatch:
    """Watches each step's metrics; `observe` returns the warning the first time the gap passes the
    threshold (and logs it), None otherwise and on every later step."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.warned_at: int | None = None

    def observe(self, step: int, metrics: dict[str, float]) -> str | None:
        gap = metrics.get(MEAN)
        if self.warned_at is not None or gap is None or gap <= self.threshold:
            return None
        self.warned_at = step
        message = (
            f"step {step}: the rollout engine's log-probs differ from the learner's by {gap:.4f} per "
            f"completion token on average (p99 {metrics.get(P99, float('nan')):.4f}; warning threshold "
            f"grpo.engine_logp_diff_warn = {self.threshold}): the engine is not sampling from the policy "
            "being trained (adapter not applied, a stale adapter or prefix cache, or a model implementation "
            "that differs). Later steps are not warned about again; the gap is in metrics.jsonl."
        )
        log.warning(message)
        return message
