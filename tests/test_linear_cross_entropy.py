import math

import pytest
import torch
import torch.nn.functional as F

from linear_cross_entropy import (LOGIT_GRADIENT_SCALE, LossSettings, _loss_and_logit_gradient, fp8_unsupported,
                                  linear_cross_entropy)
from model_builder import build_model
from model_config import ModelConfig


def _inputs(rows=37, d=16, vocab=50, ignored=5, dtype=torch.float64):
    torch.manual_seed(0)
    hidden = torch.randn(rows, d, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, d, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,))
    targets[:ignored] = -1
    return hidden, weight, targets


@pytest.mark.parametrize("chunk_rows", [1, 8, 37, 1000])
def test_loss_and_gradients_equal_plain_cross_entropy(chunk_rows):
    hidden, weight, targets = _inputs()
    expected = F.cross_entropy(hidden @ weight.T, targets, ignore_index=-1)
    expected.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=chunk_rows)
    loss.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(hidden.grad, grads[0])
    torch.testing.assert_close(weight.grad, grads[1])


def test_scaled_upstream_gradient_and_no_grad_mode():
    hidden, weight, targets = _inputs()
    (3 * linear_cross_entropy(hidden, weight, targets, chunk_rows=10)).backward()
    scaled = hidden.grad.clone()
    hidden.grad = None
    linear_cross_entropy(hidden, weight, targets, chunk_rows=10).backward()
    torch.testing.assert_close(scaled, 3 * hidden.grad)
    with torch.no_grad():
        assert linear_cross_entropy(hidden, weight, targets, chunk_rows=10).requires_grad is False


def test_bfloat16_autocast_matches_within_bf16_tolerance():
    hidden, weight, targets = _inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=8)
    loss.backward()
    assert weight.grad.dtype == torch.float32
    expected = F.cross_entropy(hidden @ weight.T, targets, ignore_index=-1)
    assert loss.item() == pytest.approx(expected.item(), rel=2e-2)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_model_chunked_loss_matches_plain_loss_and_gradients(preset):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    model = build_model(cfg).double()
    idx = torch.randint(0, 64, (3, 16))
    logits, plain = model(idx, idx)
    plain.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits_none, chunked = model(idx, idx, loss_settings=LossSettings(chunk_rows=7))
    chunked.backward()
    assert logits_none is None and logits.shape == (3, 16, 64)
    # the plain loss runs its softmax in float32, so compare at float32 precision
    torch.testing.assert_close(chunked, plain.double(), rtol=1e-6, atol=1e-6)
    for p, g in zip(model.parameters(), plain_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


def _relative_error(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.mark.parametrize("chunk_rows", [64, 256])
def test_float8_matmuls_match_plain_cross_entropy_within_float8_precision(chunk_rows):
    """e4m3 inputs (3 mantissa bits) and the e5m2 logit gradient (2 bits): the loss within 1e-3,
    gradients within a few percent, as float8 rounding allows, and far from a wrong gradient."""
    torch.manual_seed(0)
    hidden = torch.randn(256, 64, requires_grad=True)
    weight = (0.1 * torch.randn(512, 64)).requires_grad_()
    targets = torch.randint(0, 512, (256,))
    targets[:16] = -1
    expected = F.cross_entropy(hidden @ weight.T, targets, ignore_index=-1)
    expected.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=chunk_rows, fp8=True)
    (2 * loss).backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-3)
    assert _relative_error(hidden.grad, 2 * grads[0]) < 0.05
    assert _relative_error(weight.grad, 2 * grads[1]) < 0.05
    assert torch.all(hidden.grad[:16] == 0)  # ignored tokens get no gradient


def test_float8_logit_gradient_keeps_small_probabilities():
    """The fixed 2^15 scale of the e5m2 logit gradient: a probability of 1e-7 keeps its (tiny)
    gradient within e5m2's rounding, and the unlikely target's gradient near -1 does not overflow."""
    logits = torch.tensor([[20.0, 20.0 + math.log(1e-7), 0.0, -30.0]]).repeat(16, 1)
    targets = torch.full((16,), 2)
    targets[0] = -1  # ignored
    _, grad, grad_t = _loss_and_logit_gradient(logits, targets, -1, fp8=True)
    assert grad.dtype == grad_t.dtype == torch.float8_e5m2
    assert torch.equal(grad_t.view(torch.uint8), grad.T.contiguous().view(torch.uint8))
    targets[0] = 2
    expected = torch.softmax(logits, dim=-1) - F.one_hot(targets, 4)
    restored = grad.float() / LOGIT_GRADIENT_SCALE
    assert torch.isfinite(restored).all() and torch.all(restored[0] == 0)
    torch.testing.assert_close(restored[1:, :3], expected[1:, :3].float(), rtol=0.125, atol=0)
    assert restored[1, 1] > 0  # 1e-7 is not flushed to zero


def test_float8_sizes_must_be_multiples_of_16():
    assert fp8_unsupported(768, 50304, 32 * 1024, 4096) is None
    reason = fp8_unsupported(768, 50257, 32 * 1024, 4004)
    assert "vocab_size=50257" in reason and "loss_chunk_rows=4004" in reason and "n_embd" not in reason
