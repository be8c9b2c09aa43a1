import pytest
import torch

from configurator import load_config
from model_builder import build_model
from model_config import ConfigError, ModelConfig
from optimizers import AdamWPrune, build_optimizer
from pruning import Pruner, build_pruner, prunable_weights, pruning_method_for, sparsity_at
from test_optimizers import tiny_model, train_one_step, train_options

RAMP = dict(pruning_warmup=10, pruning_ramp_end=45, pruning_frequency=5)


def _masked_positions_are_zero(pruner, optimizer, check_grads):
    for name, weight in pruner.weights.items():
        pruned = ~pruner.masks[name]
        tensors = [weight, optimizer.state[weight]["exp_avg"], optimizer.state[weight]["exp_avg_sq"]]
        if check_grads:
            tensors.append(weight.grad)
        if not all(torch.all(t[pruned] == 0) for t in tensors):
            return False
    return True


def test_the_schedule_is_cubic_from_warmup_to_ramp_end():
    assert sparsity_at(50, 0.8, warmup=100, ramp_end=300) == 0.0
    assert sparsity_at(100, 0.8, warmup=100, ramp_end=300) == 0.0
    assert sparsity_at(200, 0.8, warmup=100, ramp_end=300) == pytest.approx(0.8 * (1 - 0.5 ** 3))  # 0.7
    assert sparsity_at(300, 0.8, warmup=100, ramp_end=300) == pytest.approx(0.8)
    assert sparsity_at(900, 0.8, warmup=100, ramp_end=300) == pytest.approx(0.8)
    assert sparsity_at(200, 0.8, warmup=100, ramp_end=300, schedule="linear") == pytest.approx(0.4)


@pytest.mark.parametrize("preset, per_block", [("gpt2", ["attn.qkv_proj", "attn.out_proj", "ffn.up_proj",
                                                         "ffn.down_proj"]),
                                               ("llama", ["attn.qkv_proj", "attn.out_proj", "ffn.gate_proj",
                                                          "ffn.up_proj", "ffn.down_proj"])])
def test_only_the_blocks_linear_weights_are_prunable(preset, per_block):
    model = build_model(ModelConfig.from_preset(preset, n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64))
    expected = {f"blocks.{i}.{name}.weight" for i in range(2) for name in per_block}
    weights = prunable_weights(model)
    assert set(weights) == expected
    parameters = dict(model.named_parameters())
    assert all(weights[name] is parameters[name] for name in expected)


def test_magnitude_pruning_uses_one_global_threshold():
    model = tiny_model()
    weights = prunable_weights(model)
    tiny_layer = weights["blocks.0.attn.out_proj.weight"]
    with torch.no_grad():
        tiny_layer.mul_(1e-3)  # every one of its weights is smaller than any other layer's
    total = sum(w.numel() for w in weights.values())
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    target = 0.3
    threshold = magnitudes.sort().values[round(target * total) - 1]
    pruner = Pruner(model, "magnitude", target, warmup=0, ramp_end=1, frequency=1)
    pruner.after_step(torch.optim.AdamW(model.parameters()), step=1)
    for name, weight in weights.items():
        assert torch.equal(pruner.masks[name], weight.detach().abs() > threshold)
    report = pruner.sparsity_report()
    assert report["sparsity_target"] == pytest.approx(target)
    assert report["sparsity_actual"] == pytest.approx(target, abs=1 / total)
    assert report["sparsity_layers"]["blocks.0.attn.out_proj.weight"] == 1.0
    assert report["sparsity_layers"]["blocks.1.ffn.up_proj.weight"] < target


@pytest.mark.parametrize("options", [
    {"pruning_method": "magnitude"},
    {"pruning_method": "movement"},
    {"optimizer": "adamwspam", "pruning_method": "movement", "spam_interval": 30, "spam_warmup_steps": 5},
    {"optimizer": "adamwprune", "adamwprune_variant": "bitter0"},
    {"optimizer": "adamwprune", "adamwprune_variant": "bitter1"},
], ids=["adamw-magnitude", "adamw-movement", "adamwspam-movement", "adamwprune-bitter0", "adamwprune-bitter1"])
def test_pruned_weights_stay_zero_and_the_final_sparsity_meets_the_target(options):
    model = tiny_model()
    t = train_options(target_sparsity=0.7, **RAMP, **options)
    optimizer, pruner = build_optimizer(model, t, "cpu"), build_pruner(model, t)
    losses = []
    for step in range(120):
        losses.append(train_one_step(model, optimizer, step, pruner))
        if step + 1 > t.pruning_ramp_end:  # masks are fixed after the ramp; gradients still show this step's
            assert _masked_positions_are_zero(pruner, optimizer, check_grads=True), f"step {step}"
    report = pruner.sparsity_report()
    assert report["sparsity_target"] == pytest.approx(0.7)
    assert abs(report["sparsity_actual"] - 0.7) < 0.01
    assert sum(losses[-10:]) / 10 < 0.5  # still learns the pattern with 70% of the block weights gone


def test_movement_scores_accumulate_minus_w_times_grad_and_pruned_weights_grow_back():
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters())
    pruner = Pruner(model, "movement", 0.5, warmup=0, ramp_end=3, frequency=1)
    name = "blocks.1.ffn.down_proj.weight"
    weight, scores = pruner.weights[name], pruner.scores[name]
    for w in pruner.weights.values():
        w.grad = torch.full_like(w, 0.5)
    pruner.before_clip()
    torch.testing.assert_close(scores, -0.5 * weight.detach())

    value = weight[0, 0].item()
    scores[0, 0] = -1e9  # lowest score: pruned at the first update
    pruner.after_step(optimizer, step=1)
    assert not pruner.masks[name][0, 0] and weight[0, 0] == 0
    scores[0, 0] = 1e9  # now the highest: back at the next update, with the value it had
    pruner.after_step(optimizer, step=2)
    assert pruner.masks[name][0, 0] and weight[0, 0].item() == value


def test_bitter0_importance_is_momentum_times_stability():
    layer = torch.nn.Linear(3, 2)
    optimizer = AdamWPrune(layer.parameters(), variant="bitter0", eps=1e-8)
    layer.weight.grad = torch.ones_like(layer.weight)
    layer.bias.grad = torch.ones_like(layer.bias)
    optimizer.step()
    state = optimizer.state[layer.weight]
    state["exp_avg"].copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
    state["exp_avg_sq"].copy_(torch.tensor([[4.0, 1.0, 0.25], [1.0, 9.0, 16.0]]))
    w = layer.weight.detach()
    expected = (w * state["exp_avg"]).abs() * w.abs() / (state["exp_avg_sq"].sqrt() + 1e-8)
    torch.testing.assert_close(optimizer.importance(layer.weight), expected)
    optimizer.variant = "bitter1"
    torch.testing.assert_close(optimizer.importance(layer.weight), w.abs())


def test_pruning_options_are_checked():
    model = tiny_model()
    with pytest.raises(ConfigError, match="pruning_method='state' needs optimizer='adamwprune'"):
        build_pruner(model, train_options(pruning_method="state"))
    with pytest.raises(ConfigError, match="pruning_method must be 'state'"):
        build_pruner(model, train_options(optimizer="adamwprune", pruning_method="magnitude"))
    with pytest.raises(ConfigError, match="Did you mean 'magnitude'"):
        build_pruner(model, train_options(pruning_method="magnitdue"))
    with pytest.raises(ConfigError, match="target_sparsity=1.0"):
        build_pruner(model, train_options(pruning_method="magnitude", target_sparsity=1.0))
    with pytest.raises(ConfigError, match="must come after pruning_warmup=1000"):
        build_pruner(model, train_options(pruning_method="magnitude", max_iters=1000))
    assert build_pruner(model, train_options()) is None
    assert pruning_method_for(train_options(optimizer="adamwprune")) == "state"


@pytest.mark.parametrize("options", [{"pruning_method": "movement"},
                                     {"optimizer": "adamwprune", "adamwprune_variant": "bitter0"}],
                         ids=["movement", "adamwprune-bitter0"])
def test_masks_and_scores_resume_exactly_and_the_checkpoint_keeps_its_sparsity(tmp_path, options):
    t = train_options(target_sparsity=0.6, **RAMP, **options)
    straight = tiny_model()
    straight_opt, straight_pruner = build_optimizer(straight, t, "cpu"), build_pruner(straight, t)
    for step in range(60):
        train_one_step(straight, straight_opt, step, straight_pruner)

    first = tiny_model()
    first_opt, first_pruner = build_optimizer(first, t, "cpu"), build_pruner(first, t)
    for step in range(30):  # stops mid-ramp
        train_one_step(first, first_opt, step, first_pruner)
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict(),
                "pruning": first_pruner.state_dict()}, tmp_path / "ckpt.pt")
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = tiny_model(seed=99)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt, resumed_pruner = build_optimizer(resumed, t, "cpu"), build_pruner(resumed, t)
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    resumed_pruner.load_state_dict(checkpoint["pruning"])
    assert resumed_pruner.sparsity_report() == first_pruner.sparsity_report()
    for step in range(30, 60):
        train_one_step(resumed, resumed_opt, step, resumed_pruner)

    for name in straight_pruner.masks:
        assert torch.equal(resumed_pruner.masks[name], straight_pruner.masks[name])
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the weights alone (what evaluation and sampling load) carry the sparsity
    evaluated = tiny_model(seed=7)
    evaluated.load_state_dict(straight.state_dict())
    zeros = sum((w == 0).sum().item() for w in prunable_weights(evaluated).values())
    total = sum(w.numel() for w in prunable_weights(evaluated).values())
    assert zeros / total == pytest.approx(straight_pruner.sparsity_report()["sparsity_actual"])
    assert abs(zeros / total - 0.6) < 0.01


@pytest.mark.parametrize("options,message", [
    (["--use_zero1=True", "--optimizer=adamwspam"], "optimizer='adamwspam' does not work with use_zero1=True"),
    (["--use_zero1=True", "--optimizer=adamwprune"], "optimizer='adamwprune' does not work with use_zero1=True"),
    (["--use_zero1=True", "--pruning_method=magnitude", "--target_sparsity=0.5"],
     "pruning_method='magnitude' does not work with use_zero1=True"),
    (["--use_fsdp=True", "--optimizer=adamwprune"], "pruning_method='state' does not work with use_fsdp=True"),
])
def test_sharded_strategies_refuse_what_they_would_silently_break(options, message):
    with pytest.raises(ConfigError, match=message):
        load_config(options)
    for accepted in (["--use_zero1=True"], ["--use_fsdp=True", "--optimizer=adamwspam"]):
        load_config(accepted)
