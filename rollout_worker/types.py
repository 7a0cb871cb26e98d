"""What a rollout request and its answer carry. Plain dataclasses: they cross Ray's object store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class AdapterWeights:
    """A LoRA adapter as it travels from trainer to workers: PEFT state-dict tensors (torch, on the CPU)
    and PEFT's adapter_config.json as a dict. `version` increases by one per push; 0 is the base model."""

    version: int
    tensors: dict[str, Any]
    config: dict

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())
