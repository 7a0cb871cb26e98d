"""Dr. GRPO advantages and loss against hand-computed values and gradients, and loop-vs-vectorised."""

import math

import pytest
import torch

from chexrl.core.grpo import group_advantages, grpo_loss

# the paper's clip range (GRPOConfig.epsilon / epsilon_high), which the hand computations below use
CLIP = {"clip_low": 0.15, "clip_high": 0.22}


def test_advantages_are_centred_per_group_without_std():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 3.0, 3.0, 3.0])
    a = group_advantages(r, group_size=4)
    assert a.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(r, group_size=3)


def test_on_policy_no_kl_by_hand():
    # ratio = 1 everywhere: loss = -sum_t A_i * mask / C; gradient wrt logp = -A_i / C on kept tokens
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]], requires_grad=True)
    old = logp.detach().clone()
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, m = grpo_loss(logp, old, None, adv, mask, beta=0.0, **CLIP, norm_constant=6.0)
    assert loss.item() == pytest.approx(-(2.0 * 3 + -1.0 * 2) / 6.0)
    loss.backward()
    expected = torch.tensor([[-2 / 6, -2 / 6, -2 / 6], [1 / 6, 1 / 6, 0.0]])
    assert torch.allclose(logp.grad, expected)
    assert m["policy/clip_frac"] == 0.0


def test_asymmetric_clipping_by_hand():
    # token 1: ratio e^0.5=1.6487 > 1.22 with A>0 -> clipped to 1.22, no gradient
    # token 2: ratio e^-0.5=0.6065 < 0.85 with A>0 -> unclipped (min picks ratio*A), gradient = -A*ratio/C
    logp = torch.tensor([[0.5, -0.5]], requires_grad=True)
    old = torch.zeros(1, 2)
    adv = torch.tensor([1.0])
    loss, m = grpo_loss(logp, old, None, adv, torch.ones(1, 2), beta=0.0, **CLIP, norm_constant=2.0)
    r2 = math.exp(-0.5)
    assert loss.item() == pytest.approx(-(1.22 + r2) / 2)
    loss.backward()
    assert logp.grad[0, 0].item() == pytest.approx(0.0)
    assert logp.grad[0, 1].item() == pytest.approx(-r2 / 2)
    assert m["policy/clip_frac_high"] == pytest.approx(0.5) and m["policy/clip_frac_low"] == 0.0
    # negative advantage: ratio 0.6065 < 0.85 -> clipped at 0.85 (binding), ratio 1.6487 -> unclipped
    logp2 = torch.tensor([[0.5, -0.5]], requires_grad=True)
    loss2, m2 = grpo_loss(
        logp2, old, None, torch.tensor([-1.0]), torch.ones(1, 2), beta=0.0, **CLIP, norm_constant=2.0
    )
    assert loss2.item() == pytest.approx((math.exp(0.5) + 0.85) / 2)
    loss2.backward()
    assert logp2.grad[0, 0].item() == pytest.approx(math.exp(0.5) / 2)
    assert logp2.grad[0, 1].item() == pytest.approx(0.0)
    assert m2["policy/clip_frac_low"] == pytest.approx(0.5)


def test_kl_term_by_hand():
    # zero advantage isolates the KL: k3 = e^(ref-logp) - (ref-logp) - 1; d/dlogp = -e^(ref-logp) + 1
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    loss, m = grpo_loss(
        logp, logp.detach(), ref, torch.zeros(1), torch.ones(1, 2), beta=0.15, **CLIP, norm_constant=4.0
    )
    d = torch.tensor([-0.5, 1.0])
    k3 = torch.exp(d) - d - 1
    assert loss.item() == pytest.approx(0.15 * k3.sum().item() / 4.0)
    assert m["loss/kl"] == pytest.approx(k3.mean().item())
    loss.backward()
    assert torch.allclose(logp.grad, 0.15 * (1 - torch.exp(d)).unsqueeze(0) / 4.0)


def test_constant_normaliser_is_not_length_normalisation():
    # Dr. GRPO: doubling a completion's length doubles its weight (no 1/|t_i|)
    adv = torch.tensor([1.0])
    short, _ = grpo_loss(
        torch.zeros(1, 4),
        torch.zeros(1, 4),
        None,
        adv,
        torch.tensor([[1, 1, 0, 0]]),
        beta=0.0,
        **CLIP,
        norm_constant=4.0,
    )
    long, _ = grpo_loss(
        torch.zeros(1, 4), torch.zeros(1, 4), None, adv, torch.ones(1, 4), beta=0.0, **CLIP, norm_constant=4.0
    )
    assert long.item() == pytest.approx(2 * short.item())


def test_vectorised_matches_a_token_loop():
    g = torch.Generator().manual_seed(0)
    B, T = 6, 7
    logp = (torch.randn(B, T, generator=g) * 0.3 - 1).requires_grad_()
    old = logp.detach() + torch.randn(B, T, generator=g) * 0.3
    ref = logp.detach() + torch.randn(B, T, generator=g) * 0.3
    adv = group_advantages(torch.rand(B, generator=g), group_size=3)
    mask = (torch.rand(B, T, generator=g) > 0.2).long()
    loss, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.15, **CLIP, norm_constant=B * T)
    total = 0.0
    for i in range(B):
        for t in range(T):
            if not mask[i, t]:
                continue
            ratio = math.exp(logp[i, t].item() - old[i, t].item())
            a = adv[i].item()
            surrogate = min(ratio * a, min(max(ratio, 0.85), 1.22) * a)
            d = ref[i, t].item() - logp[i, t].item()
            total += -surrogate + 0.15 * (math.exp(d) - d - 1)
    assert loss.item() == pytest.approx(total / (B * T), rel=1e-5)


def test_beta_needs_reference():
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(
            torch.zeros(1, 1),
            torch.zeros(1, 1),
            None,
            torch.zeros(1),
            torch.ones(1, 1),
            beta=0.15,
            **CLIP,
            norm_constant=1.0,
        )
