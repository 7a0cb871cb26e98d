"""Dr. GRPO: group-relative advantages and the clipped, KL-regularised token-level policy loss.

Pure tensor functions (torch on any device, no model code), following the paper's section 3.2.2:
- advantages are rewards minus their group's mean, with no division by the group's standard deviation
  (Dr. GRPO, Liu et al. 2025, removes that and the per-sequence length normalisation);
- the importance ratio is token-level, pi_theta / pi_old, against the policy that generated the rollouts;
- clipping is asymmetric, ratio in [1 - clip_low, 1 + clip_high] (paper: 0.15 / 0.22);
- the KL term to the reference (the SFT checkpoint) uses the k3 estimator of GRPO (DeepSeekMath),
  exp(ref - logp) - (ref - logp) - 1, weighted by beta (paper: 0.15);
- token losses are summed and divided by a constant (sequences x max completion tokens), never by each
  completion's own length.

Shapes: B = completions in the batch (prompts x group_size), T = completion tokens (padded).
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Rewards minus the mean of their group.

    rewards: (B,) ordered so that completions of one prompt are contiguous. Returns (B,).

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), group_size=2).tolist()
    [0.5, -0.5, 0.0, 0.0]
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)


def masked_constant_sum(values: torch.Tensor, mask: torch.Tensor, constant: float) -> torch.Tensor:
    """The one loss aggregation: sum of masked token values divided by a constant (Dr. GRPO)."""
    return (values * mask).sum() / constant


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    beta: float,
    norm_constant: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dr. GRPO loss to minimise.

    logp, old_logp, ref_logp: (B, T) log-probabilities of the sampled tokens under the current policy
    (requires grad), the rollout policy and the reference policy (None when beta == 0).
    advantages: (B,). response_mask: (B, T), 1 for completion tokens, 0 for padding.
    norm_constant: the Dr. GRPO divisor, e.g. B x max_completion_tokens.
    Returns the scalar loss and float metrics (namespaced for logging).
    """
    mask = response_mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(1)  # (B, 1)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    surrogate = torch.minimum(ratio * adv, clipped * adv)  # (B, T)
    per_token = -surrogate

    metrics: dict[str, float] = {}
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp")
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1.0  # k3 estimator, >= 0
        per_token = per_token + beta * kl
        metrics["loss/kl"] = _masked_mean(kl.detach(), mask)

    loss = masked_constant_sum(per_token, mask, norm_constant)
    with torch.no_grad():
        is_low = (ratio < 1.0 - clip_low) & (adv < 0)  # clipping binds only where it lowers the objective
        is_high = (ratio > 1.0 + clip_high) & (adv > 0)
        metrics["loss/policy"] = masked_constant_sum(-surrogate, mask, norm_constant).item()
        metrics["policy/clip_frac_low"] = _masked_mean(is_low.to(mask.dtype), mask)
        metrics["policy/clip_frac_high"] = _masked_mean(is_high.to(mask.dtype), mask)
        metrics["policy/clip_frac"] = metrics["policy/clip_frac_low"] + metrics["policy/clip_frac_high"]
        metrics["policy/ratio_mean"] = _masked_mean(ratio, mask)
        metrics["policy/approx_kl_old"] = _masked_mean(0.5 * log_ratio**2, mask)
    metrics["loss/total"] = float(loss.detach())
    return loss, metrics


# grpo_loss metrics that are parts of the Dr. GRPO sum (token values over the step's constant divisor):
# a step's value is the sum over its micro-batches. Every other metric is a token mean.
SUMMED_METRICS = frozenset({"loss/total", "loss/policy"})


def reduce_micro_batch_metrics(parts: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """One optimizer step's metrics from its micro-batches' `(grpo_loss metrics, tokens)`: the parts of
    the constant-divisor sum add up; token means are weighted by each micro-batch's tokens. Splitting a
    batch into k micro-batches then logs the same numbers as one.

    >>> reduce_micro_batch_metrics([({"loss/policy": 0.25, "loss/kl": 1.0}, 1.0),
    ...                             ({"loss/policy": 0.5, "loss/kl": 4.0}, 3.0)])
    {'loss/policy': 0.75, 'loss/kl': 3.25}
    """
    if not parts:
        raise ValueError("no micro-batch metrics to reduce")
    tokens = sum(n for _, n in parts)
    out = {}
    for key in parts[0][0]:
        if key in SUMMED_METRICS:
            out[key] = sum(m[key] for m, _ in parts)
        else:
            out[key] = sum(m[key] * n for m, n in parts) / tokens if tokens else 0.0
    return out


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    count = mask.sum()
    return float((values * mask).sum() / count) if count > 0 else 0.0


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position: (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
