"""Chunked log-probs, entropy and temperature-1 log-probs from hidden states and the LM head against the
full (N, V) computation: values, gradients (hidden and head), temperature, chunk sizes that do and do not
divide N; one projection per chunk in the forward and one in the backward."""

import pytest
import torch

from chexrl.core.logprobs import chunked_token_logprobs


def _full(hidden, weight, targets, temperature):
    logits = (hidden @ weight.T).float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1), logits


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_values_and_gradients_equal_the_full_computation(chunk):
    torch.manual_seed(0)
    n, h, v = 64, 32, 500
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    upstream = torch.randn(n, dtype=torch.float64)

    full, _ = _full(hidden, weight, targets, 0.8)
    (full.double() * upstream).sum().backward()
    g_hidden, g_weight = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    got = chunked_token_logprobs(hidden, weight, targets, temperature=0.8, chunk_tokens=chunk).logp
    assert got.shape == (n,) and got.dtype == torch.float32
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    (got.double() * upstream).sum().backward()
    torch.testing.assert_close(hidden.grad, g_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(weight.grad, g_weight, atol=1e-5, rtol=0)


def test_entropy_and_model_logprobs_equal_the_full_computation_and_leave_the_gradient_alone():
    torch.manual_seed(1)
    hidden, weight = torch.randn(10, 8, requires_grad=True), torch.randn(50, 8)
    targets = torch.randint(0, 50, (10,))
    logp, logits = _full(hidden, weight, targets, 1.3)
    log_softmax = torch.log_softmax(logits, -1)
    expected_entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    expected_raw, _ = _full(hidden, weight, targets, 1.0)
    got = chunked_token_logprobs(hidden, weight, targets, temperature=1.3, chunk_tokens=3, extras=True)
    torch.testing.assert_close(got.entropy, expected_entropy.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got.model_logp, expected_raw.detach(), atol=1e-5, rtol=0)
    assert not got.entropy.requires_grad and not got.model_logp.requires_grad
    (g_expected,) = torch.autograd.grad(logp.sum(), hidden)
    (g_got,) = torch.autograd.grad(got.logp.sum(), hidden)
    torch.testing.assert_close(g_got, g_expected, atol=1e-5, rtol=0)
    plain = chunked_token_logprobs(hidden, weight, targets, temperature=1.3, chunk_tokens=3)
    assert plain.entropy is None and plain.model_logp is None
    assert torch.equal(plain.logp, got.logp)


def test_each_chunk_is_projected_once_forward_and_once_backward(monkeypatch):
    """The LM head's matmul is a large share of a step at a 262,144-token vocabulary: the log-probs, the
    entropy and the temperature-1 log-probs share the forward's projection."""
    calls = []
    real = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda h, w: calls.append(len(h)) or real(h, w))
    hidden = torch.randn(10, 8, requires_grad=True)
    got = chunked_token_logprobs(
        hidden, torch.randn(50, 8), torch.zeros(10, dtype=torch.long), chunk_tokens=4, extras=True
    )
    assert calls == [4, 4, 2]
    got.logp.sum().backward()
    assert calls == [4, 4, 2] * 2 and hidden.grad is not None


def test_no_graph_without_grad_and_empty_input():
    hidden, weight = torch.randn(4, 8, requires_grad=True), torch.randn(20, 8)
    with torch.no_grad():
        assert not chunked_token_logprobs(
            hidden, weight, torch.zeros(4, dtype=torch.long), chunk_tokens=2
        ).logp.requires_grad
    empty = chunked_token_logprobs(
        torch.zeros(0, 8), weight, torch.zeros(0, dtype=torch.long), chunk_tokens=2
    ).logp
    assert empty.shape == (0,)


def test_bad_shapes_and_chunk_size_are_named():
    with pytest.raises(ValueError, match="do not match"):
        chunked_token_logprobs(
            torch.randn(4, 8), torch.randn(20, 8), torch.zeros(3, dtype=torch.long), chunk_tokens=2
        )
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_token_logprobs(
            torch.randn(4, 8), torch.randn(20, 8), torch.zeros(4, dtype=torch.long), chunk_tokens=0
        )
