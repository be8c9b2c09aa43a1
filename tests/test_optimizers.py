import dataclasses
import math
import types

import pytest
import torch

from model_builder import build_model
from model_config import ConfigError, ModelConfig
from optimizers import (SPAM_CLIP_MIN_STEPS, AdamWPrune, AdamWSPAM, build_optimizer, effective_max_iters, lr_at,
                        spam_update_scale)
from pruning import build_pruner
from train_config import TrainConfig

# the TrainConfig fields the optimizer and pruning options add, at their defaults
NEW_OPTIONS = dict(optimizer="adamw", spam_theta=50.0, spam_enable_clip=True, spam_spike_threshold=2.0,
                   spam_spike_window=100, spam_periodic_reset=True, spam_interval=1000, spam_warmup=True,
                   spam_warmup_steps=100, adamwprune_variant="bitter0", bitter2_scale=1.21, pruning_method=None,
                   target_sparsity=0.5, pruning_warmup=1000, pruning_ramp_end=None, pruning_frequency=50,
                   pruning_schedule="cubic")
VOCAB, BLOCK = 64, 32


def train_options(**overrides):
    return types.SimpleNamespace(**{**dataclasses.asdict(TrainConfig()), **NEW_OPTIONS,
                                    "learning_rate": 3e-3, **overrides})


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig.from_preset("gpt2", n_layer=2, n_head=2, n_embd=32, block_size=BLOCK,
                                               vocab_size=VOCAB, dropout=0.0))


def pattern_batch(step, batch_size=16):
    """Windows of one fixed cycle through all 64 tokens: the next token follows from the current
    one, so a tiny model can drive the loss from ln(64) = 4.16 to near 0 in ~100 steps."""
    cycle = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(1234))
    sequence = cycle.repeat(2 + 2 * BLOCK // VOCAB)
    starts = torch.randint(0, VOCAB, (batch_size,), generator=torch.Generator().manual_seed(step))
    x = torch.stack([sequence[s:s + BLOCK] for s in starts])
    y = torch.stack([sequence[s + 1:s + BLOCK + 1] for s in starts])
    return x, y


def train_one_step(model, optimizer, step, pruner=None, grad_clip=1.0, loss_scale=1.0):
    """One update in the order train_step/train.py make it, pruner calls included. Gradients are
    cleared first rather than last, so a test can inspect what the optimizer was given."""
    optimizer.zero_grad(set_to_none=True)
    _, loss = model(*pattern_batch(step))
    (loss * loss_scale).backward()
    if pruner:
        pruner.before_clip()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if hasattr(optimizer, "observe_grad_norm"):
        optimizer.observe_grad_norm(grad_norm)
    optimizer.step()
    if pruner:
        pruner.after_step(optimizer, step + 1)
    return loss.item()


def _spam_on_one_tensor(**options):
    param = torch.nn.Parameter(torch.zeros(4))
    defaults = dict(lr=0.1, betas=(0.9, 0.95), weight_decay=0.0, reset_interval=0, warmup_steps=0)
    return param, AdamWSPAM([param], **{**defaults, **options})


def _step_with(param, optimizer, grad, grad_norm=None):
    param.grad = torch.as_tensor(grad, dtype=torch.float32).clone()
    if grad_norm is not None:
        optimizer.observe_grad_norm(torch.tensor(grad_norm))
    optimizer.step()


def test_build_optimizer_picks_the_class_and_decays_only_matrices():
    model = tiny_model()
    assert type(build_optimizer(model, train_options(), "cpu")) is torch.optim.AdamW
    assert isinstance(build_optimizer(model, train_options(optimizer="adamwspam"), "cpu"), AdamWSPAM)
    pruner_opt = build_optimizer(model, train_options(optimizer="adamwprune", adamwprune_variant="bitter1"), "cpu")
    assert isinstance(pruner_opt, AdamWPrune) and pruner_opt.variant == "bitter1"
    decayed, not_decayed = pruner_opt.param_groups
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in not_decayed["params"])


def test_adamw_kernel_picks_the_triton_kernel_where_it_runs(monkeypatch):
    """auto and triton take fused_adamw's kernel where it runs; triton warns where it does not
    (here the CPU, until the tests count it as a kernel device); torch never takes it."""
    import fused_adamw
    model = tiny_model()
    assert type(build_optimizer(model, train_options(), "cpu")) is torch.optim.AdamW
    with pytest.warns(UserWarning, match=r"adamw_kernel=triton ignored: .* the device is cpu"):
        assert type(build_optimizer(model, train_options(adamw_kernel="triton"), "cpu")) is torch.optim.AdamW
    monkeypatch.setattr(fused_adamw, "KERNEL_DEVICES", ("cuda", "cpu"))
    for kernel in ("auto", "triton"):
        optimizer = build_optimizer(model, train_options(adamw_kernel=kernel), "cpu")
        assert type(optimizer) is fused_adamw.AdamW and optimizer.defaults["betas"] == (0.9, 0.95)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert type(build_optimizer(model, train_options(adamw_kernel="torch"), "cpu")) is torch.optim.AdamW


def test_bad_optimizer_options_name_the_key_and_suggest():
    with pytest.raises(ConfigError, match=r"optimizer='adamwspm'.*Did you mean 'adamwspam'"):
        build_optimizer(tiny_model(), train_options(optimizer="adamwspm"), "cpu")
    with pytest.raises(ConfigError, match=r"adamwprune_variant='bitter5'.*bitter0, bitter1, bitter2"):
        build_optimizer(tiny_model(), train_options(optimizer="adamwprune", adamwprune_variant="bitter5"), "cpu")
    with pytest.raises(ConfigError, match=r"adamw_kernel='trition'.*Did you mean 'triton'"):
        build_optimizer(tiny_model(), train_options(adamw_kernel="trition"), "cpu")
    with pytest.raises(ConfigError, match="spam_spike_window=5"):
        build_optimizer(tiny_model(), train_options(spam_spike_window=5), "cpu")


def test_spam_clips_elements_whose_square_exceeds_theta_times_v():
    param, optimizer = _spam_on_one_tensor(theta=50.0)
    for _ in range(SPAM_CLIP_MIN_STEPS):
        _step_with(param, optimizer, torch.ones(4))  # v̂ = 1 for every element
    exp_avg_before = optimizer.state[param]["exp_avg"].clone()
    _step_with(param, optimizer, [1.0, 100.0, -100.0, 5.0])
    clipped = torch.tensor([1.0, math.sqrt(50.0), -math.sqrt(50.0), 5.0])  # 5^2 = 25 < 50: kept
    torch.testing.assert_close(param.grad, clipped)
    torch.testing.assert_close(optimizer.state[param]["exp_avg"], 0.9 * exp_avg_before + 0.1 * clipped)


def test_spam_does_not_clip_before_v_is_meaningful_or_when_disabled():
    for options, steps_before in (({}, SPAM_CLIP_MIN_STEPS - 1), ({"clip": False}, SPAM_CLIP_MIN_STEPS)):
        param, optimizer = _spam_on_one_tensor(**options)
        for _ in range(steps_before):
            _step_with(param, optimizer, torch.ones(4))
        _step_with(param, optimizer, [1.0, 100.0, -100.0, 5.0])
        torch.testing.assert_close(param.grad, torch.tensor([1.0, 100.0, -100.0, 5.0]))


def test_spam_update_scale_is_a_cosine_warmup():
    assert spam_update_scale(1, 4) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))  # 0.1464
    assert spam_update_scale(2, 4) == pytest.approx(0.5)
    assert spam_update_scale(4, 4) == pytest.approx(1.0)
    assert spam_update_scale(50, 4) == 1.0
    assert spam_update_scale(1, 0) == 1.0


def test_spam_periodic_reset_zeroes_moments_restarts_bias_correction_and_warms_up():
    param, optimizer = _spam_on_one_tensor(reset_interval=5, warmup_steps=4, clip=False)
    grad = torch.tensor([1.0, -2.0, 3.0, 0.5])
    deltas = []
    for _ in range(7):
        before = param.detach().clone()
        _step_with(param, optimizer, grad)
        deltas.append(param.detach() - before)
    assert optimizer.resets == 1 and optimizer.steps_since_reset == 2
    # constant gradients: m̂ / sqrt(v̂) = sign(g), so each update is -lr * scale * sign(g)
    torch.testing.assert_close(deltas[4], -0.1 * grad.sign(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(deltas[5], -0.1 * spam_update_scale(1, 4) * grad.sign(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(deltas[6], -0.1 * 0.5 * grad.sign(), rtol=1e-5, atol=1e-7)
    # two steps after the reset the moments hold only those two gradients
    torch.testing.assert_close(optimizer.state[param]["exp_avg"], (0.9 * 0.1 + 0.1) * grad)
    torch.testing.assert_close(optimizer.state[param]["exp_avg_sq"], (0.95 * 0.05 + 0.05) * grad ** 2)


def test_spam_detects_a_global_norm_spike_and_halves_the_momentum():
    param, optimizer = _spam_on_one_tensor(spike_threshold=2.0, spike_window=20)
    for step in range(30):
        _step_with(param, optimizer, torch.ones(4), 1.0 + 0.01 * (-1) ** step)  # z-scores stay near 1
    assert optimizer.spam_stats() == {"spam_spikes": 0, "spam_last_spike_step": None, "spam_resets": 0}
    exp_avg_before = optimizer.state[param]["exp_avg"].clone()
    _step_with(param, optimizer, torch.ones(4), 10.0)
    torch.testing.assert_close(optimizer.state[param]["exp_avg"], 0.5 * 0.9 * exp_avg_before + 0.1)
    assert optimizer.spam_stats()["spam_spikes"] == 1 and optimizer.spam_stats()["spam_last_spike_step"] == 31
    _step_with(param, optimizer, torch.ones(4), 1.005)  # ordinary again: the spike did not enter the window
    assert optimizer.spam_stats()["spam_spikes"] == 1


def _second_moment_growth_at_spike(optimizer_name):
    """Largest v_after / v_before over all elements at a step whose gradient is 1000x too large."""
    model = tiny_model()
    optimizer = build_optimizer(model, train_options(optimizer=optimizer_name, spam_periodic_reset=False), "cpu")
    for step in range(30):
        train_one_step(model, optimizer, step, grad_clip=0.0)
    before = [optimizer.state[p]["exp_avg_sq"].clone() for p in model.parameters()]
    train_one_step(model, optimizer, 30, grad_clip=0.0, loss_scale=1000.0)
    after = [optimizer.state[p]["exp_avg_sq"] for p in model.parameters()]
    return optimizer, max((a[b > 0] / b[b > 0]).max().item() for a, b in zip(after, before))


def test_a_spike_injected_into_training_is_detected_and_clipped():
    spam, growth = _second_moment_growth_at_spike("adamwspam")
    assert spam.spam_stats()["spam_spikes"] == 1 and spam.spam_stats()["spam_last_spike_step"] == 31
    # clipped gradients satisfy g^2 <= theta * v̂ with v̂ = v / (1 - beta2^30), which bounds v's growth
    bound = 0.95 + 0.05 * 50.0 / (1 - 0.95 ** 30)
    assert growth <= bound * (1 + 1e-5)
    _, adamw_growth = _second_moment_growth_at_spike("adamw")
    assert adamw_growth > 1000 * bound  # without the clip the spike inflates v by ~1e6 * (1 - beta2)


@pytest.mark.parametrize("options", [
    {"optimizer": "adamw"},
    {"optimizer": "adamwspam", "spam_interval": 50, "spam_warmup_steps": 10},
    {"optimizer": "adamwprune", "adamwprune_variant": "bitter0", "pruning_warmup": 20, "pruning_ramp_end": 100},
], ids=["adamw", "adamwspam", "adamwprune"])
def test_every_optimizer_converges_on_a_tiny_model(options):
    model = tiny_model()
    t = train_options(**options)
    optimizer, pruner = build_optimizer(model, t, "cpu"), build_pruner(model, t)
    losses = [train_one_step(model, optimizer, step, pruner) for step in range(150)]
    assert losses[0] > 4.0  # about ln(64) = 4.16
    assert sum(losses[-10:]) / 10 < 0.3  # falls by more than 3.7 nats in 150 steps


def test_spam_resumes_exactly_from_a_weights_only_checkpoint(tmp_path):
    t = train_options(optimizer="adamwspam", spam_interval=15, spam_warmup_steps=5)
    straight = tiny_model()
    straight_opt = build_optimizer(straight, t, "cpu")
    for step in range(40):
        train_one_step(straight, straight_opt, step)

    first = tiny_model()
    first_opt = build_optimizer(first, t, "cpu")
    for step in range(20):
        train_one_step(first, first_opt, step)
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, tmp_path / "ckpt.pt")
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = tiny_model(seed=99)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = build_optimizer(resumed, t, "cpu")
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    for step in range(20, 40):
        train_one_step(resumed, resumed_opt, step)

    assert resumed_opt.spam_stats() == straight_opt.spam_stats()
    torch.testing.assert_close(resumed_opt.norm_window, straight_opt.norm_window, equal_nan=True)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_spam_refuses_another_optimizers_state():
    model = tiny_model()
    adamw = build_optimizer(model, train_options(), "cpu")
    train_one_step(model, adamw, 0)
    with pytest.raises(ConfigError, match="not written by adamwspam"):
        build_optimizer(model, train_options(optimizer="adamwspam"), "cpu").load_state_dict(adamw.state_dict())


def test_bitter2_scales_max_iters_and_the_lr_schedule_follows():
    bitter2 = train_options(optimizer="adamwprune", adamwprune_variant="bitter2", max_iters=1000, warmup_iters=10)
    assert effective_max_iters(bitter2) == 1210
    bitter1 = train_options(optimizer="adamwprune", adamwprune_variant="bitter1", max_iters=1000)
    assert effective_max_iters(bitter1) == 1000
    assert lr_at(1000, bitter2) > bitter2.min_lr
    assert lr_at(1210, bitter2) == bitter2.min_lr
