"""What a rollout request and its answer carry. Plain dataclasses: they cross Ray's object store. The
adapter pushed to the workers, `AdapterWeights`, lives beside the models (chexrl/models/adapter_io.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RolloutPrompt:
    """One prompt: chat messages whose image parts ({"type": "image"}) are filled, in order, by `images`.

    Images travel as encoded file bytes (PNG/JPEG) so no filesystem is assumed between nodes.
    """

    prompt_id: str
    messages: list[dict]
    images: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float]  # log-probability of each sampled token under the sampling policy
    finish_reason: str  # "stop" | "length" | ...


@dataclass(frozen=True)
class RolloutGroup:
    """The completions of one prompt, or the error that failed it (then `completions` is empty)."""

    prompt_id: str
    prompt_text: str  # the prompt as rendered by the model's chat template
    completions: list[Completion]
    adapter_version: int  # 0 = the base model without adapter
    error: str | None = None


class RolloutError(RuntimeError):
    """A rollout request that cannot be served as asked (bad input, stale adapter)."""
