import contextlib

import torch

from model_builder import build_model
from model_config import ModelConfig
from train_step import train_step

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, dropout=0.0)


def _model_and_batches(seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_preset("llama", **TINY))
    x = torch.randint(0, 64, (8, 16))
    return model, x, torch.roll(x, -1, dims=1)


def _sgd_step(model, batches, accumulation, grad_clip=0.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    it = iter(batches)
    return train_step(model, optimizer, lambda: next(it), accumulation, contextlib.nullcontext(), grad_clip)


def test_accumulation_equals_one_big_batch():
    big, x, y = _model_and_batches()
    small, _, _ = _model_and_batches()
    full = _sgd_step(big, [(x, y)], 1)
    accumulated = _sgd_step(small, [(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)], 4)
    torch.testing.assert_close(accumulated.loss, full.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(accumulated.grad_norm, full.grad_norm, rtol=1e-5, atol=1e-6)
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_clipping_reports_the_norm_before_clipping_and_clips():
    clipped, x, y = _model_and_batches()
    free, _, _ = _model_and_batches()
    before = [p.detach().clone() for p in clipped.parameters()]
    result = _sgd_step(clipped, [(x, y)], 1, grad_clip=1e-3)
    unclipped = _sgd_step(free, [(x, y)], 1, grad_clip=0.0)
    torch.testing.assert_close(result.grad_norm, unclipped.grad_norm)
    assert result.grad_norm > 1e-3
    update_norm = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(clipped.parameters(), before)))
    torch.testing.assert_close(update_norm, torch.tensor(0.1 * 1e-3), rtol=1e-3, atol=1e-7)


def test_gradients_are_cleared_after_the_step():
    model, x, y = _model_and_batches()
    _sgd_step(model, [(x, y)], 1)
    assert all(p.grad is None for p in model.parameters())


def test_the_host_copy_of_the_loss_is_the_accumulated_loss():
    model, x, y = _model_and_batches()
    result = _sgd_step(model, [(x[i:i + 4], y[i:i + 4]) for i in (0, 4)], 2)
    assert result.loss_copied is None  # CPU: the copy is done when the step returns
    assert result.loss_value() == result.loss.item() and result.loss_on_host.device.type == "cpu"
    result.loss.add_(1.0)  # a copy, not the device tensor itself
    assert result.loss_value() != result.loss.item()


def test_fused_adamw_clipping_inside_its_step_equals_clipping_the_gradients_first():
    """train_step hands torch's fused AdamW the clipping factor as its grad_scale instead of scaling
    the gradients; the update must be the one clip_grad_norm_ + a plain AdamW step makes. eps=1 makes
    the update depend on the gradients' scale (Adam's is otherwise almost scale-free)."""
    runs = []
    for options, grad_clip in ((dict(fused=True), 1e-2), (dict(foreach=False), 1e-2), (dict(fused=True), 0.0)):
        model, x, y = _model_and_batches()
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, eps=1.0, **options)
        result = train_step(model, optimizer, lambda: (x, y), 1, contextlib.nullcontext(), grad_clip=grad_clip)
        assert not hasattr(optimizer, "grad_scale")
        runs.append((result.grad_norm, [p.detach() for p in model.parameters()]))
    (fused_norm, fused), (plain_norm, plain), (_, unclipped) = runs
    torch.testing.assert_close(fused_norm, plain_norm)
    assert fused_norm > 1e-2  # the clipping is active
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert max((a - b).abs().max() for a, b in zip(fused, unclipped)) > 1e-4


def test_fused_adamw_clips_inside_its_step_only_on_plain_parameters(tmp_path):
    """FSDP2's DTensor parameters take the clip-then-step path; the check reads the first parameter,
    as fully_shard on the root module makes every parameter a DTensor."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    import fused_adamw
    from train_step import _clips_inside_the_step
    model, _, _ = _model_and_batches()
    fused = torch.optim.AdamW(model.parameters(), fused=True)
    assert _clips_inside_the_step(fused, model)
    assert _clips_inside_the_step(fused_adamw.AdamW(model.parameters()), model)
    assert not _clips_inside_the_step(torch.optim.AdamW(model.parameters(), foreach=False), model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        assert not _clips_inside_the_step(fused, model)
    finally:
        dist.destroy_process_group()
