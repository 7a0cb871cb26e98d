"""Per-token log-probabilities, entropies and the model's own log-probabilities from hidden states and the
LM head, a chunk of tokens at a time, so that no (tokens, vocabulary) logits tensor of the whole batch ever
exists.

Why: MedGemma-4B's vocabulary is 262,144. One GRPO step of 32 completions x 300 tokens would hold
32 x 300 x 262,144 x 4 bytes = 10 GB of fp32 logits, and as much again for their gradient. Here the
logits of `chunk_tokens` tokens are made, reduced to a few numbers per token, and dropped; the backward
pass recomputes each chunk's logits from its hidden states and writes the gradient directly (d log p /
d z = one-hot - softmax), so the peak is one chunk's logits whatever the batch. This is Liger's fused
linear cross-entropy idea, written with plain torch so it runs the same on the CPU and on CUDA; results
equal the full computation (tests/test_core_logprobs.py: values and gradients to 1e-5).

Cost: one LM-head projection per chunk in the forward, whatever is asked for (the log-probs at the
sampling temperature, the entropy and the temperature-1 log-probs all come from it), and one projection
plus the gradient's matmuls in the backward. The LM head is a large share of a step at this vocabulary:
262,144 x 2,560 multiply-adds a token, a fifth of MedGemma-4B's decoder stack.

Shapes: N = tokens (flattened completion positions), H = hidden size, V = vocabulary.
Pure tensor functions: no model code, no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class TokenLogProbs(NamedTuple):
    """Per-token figures of `chunked_token_logprobs`, each (N,) float32."""

    logp: torch.Tensor  # log-prob of the target at `temperature`; differentiable
    entropy: torch.Tensor | None  # entropy at `temperature`; detached (a logged metric)
    model_logp: torch.Tensor | None  # log-prob of the target at temperature 1; detached


def _logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(n, H) x (V, H) -> (n, V) fp32 logits, as the model's LM head computes them (matmul in the weights'
    dtype, then upcast)."""
    return torch.nn.functional.linear(hidden, weight).float()


def _picked(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.gather(logits, -1, targets[:, None]).squeeze(-1)


def _forward_chunk(h, weight, t, temperature: float, extras: bool):
    """One chunk's (logp, logsumexp at temperature, entropy, model_logp) from one projection; the logits
    are divided and shifted in place so that at most two (n, V) fp32 tensors live at once."""
    logits = _logits(h, weight)
    model_logp = _picked(logits, t) - torch.logsumexp(logits, -1) if extras else None
    logits.div_(temperature)
    lse = torch.logsumexp(logits, -1)
    logp = _picked(logits, t) - lse
    entropy = None
    if extras:
        log_softmax = logits.sub_(lse[:, None])
        entropy = -(log_softmax.exp().mul_(log_softmax)).sum(-1)
    return logp, lse, entropy, model_logp


class _ChunkedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, chunk_tokens: int, extras: bool):
        n = hidden.shape[0]
        out = {k: hidden.new_empty(n, dtype=torch.float32) for k in ("logp", "lse", "entropy", "model")}
        for start in range(0, n, chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            logp, lse, entropy, model_logp = _forward_chunk(
                hidden[rows], weight, targets[rows], temperature, extras
            )
            out["logp"][rows], out["lse"][rows] = logp, lse
            if extras:
                out["entropy"][rows], out["model"][rows] = entropy, model_logp
        ctx.save_for_backward(hidden, weight, targets, out["lse"])
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        ctx.mark_non_differentiable(out["entropy"], out["model"])
        return out["logp"], out["entropy"], out["model"]

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy, _grad_model_logp):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        for start in range(0, hidden.shape[0], ctx.chunk_tokens):
            rows = slice(start, start + ctx.chunk_tokens)
            h, t, g = hidden[rows], targets[rows], grad_logp[rows].float()
            # d logp / d z = one-hot(target) - softmax(z), z = logits / temperature; in place on the logits
            grad_z = _logits(h, weight).div_(ctx.temperature).sub_(lse[rows, None]).exp_().mul_(-g[:, None])
            grad_z[torch.arange(len(t), device=t.device), t] += g
            grad_z = grad_z.div_(ctx.temperature).to(weight.dtype)
            if need_hidden:
                grad_hidden[rows] = grad_z @ weight
            if need_weight:
                grad_weight += grad_z.T @ h
        return grad_hidden, grad_weight, None, None, None, None


def chunked_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int,
    extras: bool = False,
) -> TokenLogProbs:
    """log softmax(hidden @ weight.T / temperature)[target] for every token, chunk by chunk; with
    `extras`, also each token's entropy at `temperature` and its log-prob at temperature 1 (what vLLM
    returns with logprobs_mode "raw_logprobs"), from the same projection.

    hidden: (N, H) final hidden states (after the model's last norm); weight: (V, H) the LM head;
    targets: (N,) token ids. `logp` is differentiable with respect to `hidden` (and `weight` when it
    requires grad); nothing of size (N, V) is kept for the backward.

    >>> h, w = torch.randn(5, 4), torch.randn(7, 4)
    >>> t = torch.tensor([0, 6, 3, 3, 1])
    >>> full = torch.log_softmax(h @ w.T, -1).gather(-1, t[:, None]).squeeze(-1)
    >>> torch.allclose(chunked_token_logprobs(h, w, t, chunk_tokens=2).logp, full, atol=1e-6)
    True
    """
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} do not match")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    logp, entropy, model_logp = _ChunkedLogProbs.apply(
        hidden, weight, targets, temperature, chunk_tokens, extras
    )
    return TokenLogProbs(logp, entropy if extras else None, model_logp if extras else None)
