"""Evaluate a policy on a test set: greedy rollouts through the rollout workers, metrics from the same
core function the evaluator's /evaluate route uses (chexrl.core.metrics.completion_metrics); and n sampled
rollouts per image for Pass@K (chexrl.core.pass_at_k)."""

from __future__ import annotations

from chexrl.config import EVAL_BATCH_IMAGES, SamplingConfig
from chexrl.core.metrics import completion_metrics
from chexrl.core.prompts import DEFAULT_PROMPT, build_messages
from chexrl.core.samples import XraySample
from chexrl.core.schemas import TRAINING_SCHEMA, get_schema
from chexrl.data.images import image_bytes
from rollout_worker.types import RolloutPrompt


def evaluate_samples(
    router,
    samples: list[XraySample],
    *,
    prompt_name: str = DEFAULT_PROMPT,
    max_tokens: int,
    batch_size: int = EVAL_BATCH_IMAGES,
) -> dict:
    """Greedy completions for every sample with the router's live adapter; returns /evaluate's JSON shape
    plus the completions. All samples must share one label schema."""
    schema = _schema(samples)
    greedy = SamplingConfig(greedy=True, max_tokens=max_tokens)
    completions: list[str] = []
    for _chunk, groups in _generate(router, samples, prompt_name, greedy, batch_size):
        for group in groups:
            completions.append(group.completions[0].text if group.completions else "")
    metrics = completion_metrics(completions, [s.labels for s in samples], get_schema(schema))
    return {"schema": schema, **metrics.as_dict(), "completions": completions}


def sample_completions(
    router,
    samples: list[XraySample],
    sampling: SamplingConfig,
    *,
    n: int,
    prompt_name: str = DEFAULT_PROMPT,
    max_tokens: int,
    batch_size: int = EVAL_BATCH_IMAGES,
) -> list[list[str]]:
    """`n` completions per sample at `sampling`'s temperature, top-p and seed (its own n, max_tokens and
    greedy flag are replaced), with the router's live adapter; one list of n texts per sample. A sample
    the engine failed raises, naming the image: a missing answer is not a wrong one."""
    _schema(samples)
    settings = sampling.model_copy(update={"n": n, "max_tokens": max_tokens, "greedy": False})
    texts: list[list[str]] = []
    for chunk, groups in _generate(router, samples, prompt_name, settings, batch_size):
        for s, group in zip(chunk, groups, strict=True):
            if len(group.completions) != n:
                raise RuntimeError(
                    f"sampling {s.image_path}: got {len(group.completions)} of {n} completions "
                    f"({group.error or 'no error given'})"
                )
            texts.append([c.text for c in group.completions])
    return texts


def _schema(samples: list[XraySample]) -> str:
    schemas = {s.schema for s in samples}
    if len(schemas) != 1:
        raise ValueError(f"a test set must use one label schema, got {sorted(schemas)}")
    return schemas.pop()


def _generate(router, samples: list[XraySample], prompt_name: str, sampling: SamplingConfig, batch_size: int):
    """(chunk of samples, their rollout groups in order), one generate call per `batch_size` images."""
    messages = build_messages(
        prompt_name, schema=TRAINING_SCHEMA
    )  # the policy always answers in CheXpert labels
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts = [
            RolloutPrompt(f"eval:{start + i}", messages, [image_bytes(s.image_path)])
            for i, s in enumerate(chunk)
        ]
        yield chunk, router.generate(prompts, sampling)
