"""Per-token log-probabilities and entropies from hidden states and the LM head, a chunk of tokens at a
time, so that no (tokens, vocabulary) logits tensor of the whole batch ever exists.

Why: MedGemma-4B's vocabulary is 262,144. One GRPO step of 32 completions x 300 tokens would hold
32 x 300 x 262,144 x 4 bytes = 10 GB of fp32 logits, and as much again for their gradient. Here the
logits of `chunk_tokens` tokens are made, reduced to one number per token, and dropped; in the backward
pass each chunk is recomputed from its hidden states (activation checkpointing of the LM head), so the
peak is one chunk's logits whatever the batch. This is TRL's `selective_log_softmax` and Liger's fused
linear cross-entropy idea, written with plain torch so it runs the same on the CPU and on CUDA; results
equal the full computation (tests/test_core_logprobs.py: values and gradients to 1e-5).

Shapes: N = tokens (flattened completion positions), H = hidden size, V = vocabulary.
Pure tensor functions: no model code, no I/O.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n, H) x (V, H) -> (n, V) fp32 logits at `temperature`, as the model's LM head computes them
    (matmul in the weights' dtype, then upcast)."""
    return torch.nn.functional.linear(hidden, weight).float() / temperature


def _chunk_logp(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float):
    logits = _chunk_logits(hidden, weight, temperature)
    return torch.gather(logits, -1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def chunked_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int,
) -> torch.Tensor:
    """log softmax(hidden @ weight.T / temperature)[target] for every token, chunk by chunk.

    hidden: (N, H) final hidden states (after the model's last norm); weight: (V, H) the LM head;
    targets: (N,) token ids. Returns (N,) float32, differentiable with respect to `hidden` (and `weight`
    when it requires grad). Under autograd each chunk is checkpointed: its logits are freed after the
    forward and recomputed in the backward, one chunk at a time.

    >>> h, w = torch.randn(5, 4), torch.randn(7, 4)
    >>> t = torch.tensor([0, 6, 3, 3, 1])
    >>> full = torch.log_softmax(h @ w.T, -1).gather(-1, t[:, None]).squeeze(-1)
    >>> torch.allclose(chunked_token_logprobs(h, w, t, chunk_tokens=2), full, atol=1e-6)
    True
    """
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} do not match")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    parts = []
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if grad:
            parts.append(checkpoint(_chunk_logp, h, weight, t, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_logp(h, weight, t, temperature))
    if not parts:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(parts)


@torch.no_grad()
def chunked_token_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, *, temperature: float = 1.0, chunk_tokens: int
) -> torch.Tensor:
    """Entropy of softmax(hidden @ weight.T / temperature) at each token, chunk by chunk: (N, H) -> (N,)
    float32, detached (a logged metric, never a loss term)."""
    parts = []
    for start in range(0, hidden.shape[0], chunk_tokens):
        logp = torch.log_softmax(_chunk_logits(hidden[start : start + chunk_tokens], weight, temperature), -1)
        parts.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
