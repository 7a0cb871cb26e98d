"""Chunked log-probs and entropy from hidden states and the LM head against the full (N, V) computation:
values, gradients (hidden and head), temperature, chunk sizes that do and do not divide N."""

import pytest
import torch

from chexrl.core.logprobs import chunked_token_entropy, chunked_token_logprobs


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

    got = chunked_token_logprobs(hidden, weight, targets, temperature=0.8, chunk_tokens=chunk)
    assert got.shape == (n,) and got.dtype == torch.float32
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    (got.double() * upstream).sum().backward()
    torch.testing.assert_close(hidden.grad, g_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(weight.grad, g_weight, atol=1e-5, rtol=0)


def test_entropy_equals_the_full_computation():
    torch.manual_seed(1)
    hidden, weight = torch.randn(10, 8), torch.randn(50, 8)
    _, logits = _full(hidden, weight, torch.zeros(10, dtype=torch.long), 1.3)
    logp = torch.log_softmax(logits, -1)
    expected = -(logp.exp() * logp).sum(-1)
    got = chunked_token_entropy(hidden, weight, temperature=1.3, chunk_tokens=3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not got.requires_grad


def test_no_graph_without_grad_and_empty_input():
    hidden, weight = torch.randn(4, 8, requires_grad=True), torch.randn(20, 8)
    with torch.no_grad():
        assert not chunked_token_logprobs(
            hidden, weight, torch.zeros(4, dtype=torch.long), chunk_tokens=2
        ).requires_grad
    empty = chunked_token_logprobs(
        torch.zeros(0, 8), weight, torch.zeros(0, dtype=torch.long), chunk_tokens=2
    )
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
