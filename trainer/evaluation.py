"""Evaluate a policy on a test set: greedy rollouts through the rollout workers, metrics from the same
core function the evaluator's /evaluate route uses (chexrl.core.metrics.completion_metrics)."""

from __future__ import annotations

from chexrl.config import SamplingConfig
from chexrl.core.metrics import completion_metrics
from chexrl.core.prompts import DEFAULT_PROMPT, build_messages
from chexrl.core.samples import XraySample
from chexrl.core.schemas import get_schema
from rollout_worker.types import RolloutPrompt


def evaluate_samples(
    router,
    samples: list[XraySample],
    *,
    prompt_name: str = DEFAULT_PROMPT,
    max_tokens: int = 256,
    batch_size: int = 32,
) -> dict:
    """Greedy completions for every sample with the router's live adapter; returns /evaluate's JSON shape
    plus the completions. All samples must share one label schema."""
    from trainer.loop import image_bytes

    schemas = {s.schema for s in samples}
    if len(schemas) != 1:
        raise ValueError(f"a test set must use one label schema, got {sorted(schemas)}")
    schema = schemas.pop()
    messages = build_messages(
        prompt_name, schema="chexpert14"
    )  # the policy always answers in CheXpert labels
    greedy = SamplingConfig(greedy=True, max_tokens=max_tokens)
    completions: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts = [
            RolloutPrompt(f"eval:{start + i}", messages, [image_bytes(s.image_path)])
            for i, s in enumerate(chunk)
        ]
        for group in router.generate(prompts, greedy):
            completions.append(group.completions[0].text if group.completions else "")
    metrics = completion_metrics(completions, [s.labels for s in samples], get_schema(schema))
    return {"schema": schema, **metrics.as_dict(), "completions": completions}
