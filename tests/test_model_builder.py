import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model_builder import build_model
from model_config import PRESETS, ModelConfig

TINY = dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=96)


def test_gpt2_small_has_exactly_openai_parameter_count():
    model = build_model(ModelConfig.from_preset("gpt2", vocab_size=50257))
    assert model.num_params(non_embedding=False) == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 50257 * 768 - 1024 * 768


def test_tied_weights_share_one_tensor_and_untied_do_not():
    tied = build_model(ModelConfig.from_preset("gpt2", **TINY))
    assert tied.lm_head.weight is tied.wte.weight
    untied = build_model(ModelConfig.from_preset("llama", **TINY))
    assert untied.lm_head.weight is not untied.wte.weight
    # untied head counts as non-embedding (it does matmul work), the tied one not twice
    assert untied.num_params() - tied.num_params() != 0


def test_loss_is_mean_cross_entropy_ignoring_minus_one():
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("llama", **TINY))
    idx = torch.randint(0, 96, (2, 8))
    targets = idx.clone()
    targets[0, :4] = -1
    logits, loss = model(idx, targets)
    keep = targets != -1
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_residual_dtype_sets_the_stream_between_blocks(preset):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset(preset, **TINY))
    idx = torch.randint(0, 96, (2, 16))
    seen = []
    model.blocks[1].register_forward_hook(lambda module, args, output: seen.append((args[0].dtype, output.dtype)))
    losses = {}
    for residual_dtype in (None, torch.float32, torch.bfloat16):
        model.residual_dtype = residual_dtype
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses[residual_dtype] = model(idx, idx)[1].item()
    # autocast alone leaves the residual sums in fp32, as the embeddings are
    assert seen == [(torch.float32, torch.float32)] * 2 + [(torch.bfloat16, torch.bfloat16)]
    assert losses[None] == losses[torch.float32]
    assert losses[torch.bfloat16] == pytest.approx(losses[torch.float32], abs=0.02)


def test_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("gpt2", n_layer=8, n_head=4, n_embd=256, vocab_size=1000, block_size=64)
    model = build_model(cfg)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.qkv_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    expected = 0.02 / (2 * 8) ** 0.5
    assert model.blocks[0].attn.out_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[3].ffn.down_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[0].attn.qkv_proj.bias.abs().max().item() == 0


def _counted_training_flops(cfg, batch, seq_len):
    model = build_model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        loss.backward()
    return counter.get_total_flops() / (batch * seq_len)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_flops_formula_matches_flop_counter(preset):
    cfg = ModelConfig.from_preset(preset, **TINY, attention_backend="manual")
    formula = build_model(cfg).flops_per_token(cfg.block_size)
    assert formula["total"] == pytest.approx(_counted_training_flops(cfg, 2, cfg.block_size), rel=0.03)
    assert set(formula) >= {"attention_proj", "attention_scores", "ffn", "lm_head", "total"}


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_flops_formula_matches_flop_counter_for_grouped_query_attention(n_kv_head):
    cfg = ModelConfig.from_preset("llama", **TINY, n_kv_head=n_kv_head, attention_backend="manual")
    formula = cfg and build_model(cfg).flops_per_token(cfg.block_size)["total"]
    assert formula == pytest.approx(_counted_training_flops(cfg, 2, cfg.block_size), rel=0.03)


def test_flops_breakdown_reflects_the_architecture():
    gpt2 = build_model(ModelConfig.from_preset("gpt2", **TINY)).flops_per_token(32)
    llama = build_model(ModelConfig.from_preset("llama", **TINY, ffn_hidden_size=256)).flops_per_token(32)
    gqa = build_model(ModelConfig.from_preset("llama", **TINY, n_kv_head=1)).flops_per_token(32)
    assert gpt2["ffn"] == 3 * 2 * 2 * 64 * 256 * 2  # two matrices
    assert llama["ffn"] == 3 * 3 * 2 * 64 * 256 * 2  # SwiGLU's third matrix
    assert gqa["attention_proj"] < llama["attention_proj"]
    assert llama["position_encoding"] > 0 and gpt2["position_encoding"] == 0
    assert gpt2["attention_scores"] == 3 * 4 * 32 * 64 * 2
    assert gpt2["lm_head"] == llama["lm_head"] == 3 * 2 * 64 * 96  # tied or not, the head does the work


@pytest.mark.parametrize("preset", ["gpt2", "team"])
def test_kv_cached_generation_matches_full_recomputation(preset):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset(preset, **TINY)).eval()
    prompt = torch.randint(0, 96, (2, 5))
    cached = model.generate(prompt, max_new_tokens=40, temperature=0)  # slides past block_size=32
    idx = prompt
    for _ in range(40):
        logits, _ = model(idx[:, -32:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, idx)


def test_generate_with_top_k_one_is_greedy():
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("llama", **TINY)).eval()
    prompt = torch.randint(0, 96, (1, 4))
    assert torch.equal(model.generate(prompt, 10, temperature=0.8, top_k=1), model.generate(prompt, 10, temperature=0))


def test_post_norm_has_no_final_norm_and_trains():
    model = build_model(ModelConfig.from_preset("gpt2", **TINY, norm_position="post"))
    assert isinstance(model.final_norm, torch.nn.Identity)
    idx = torch.randint(0, 96, (2, 32))
    _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)


def test_parameter_names_of_multi_head_attention_are_kept():
    names = set(build_model(ModelConfig.from_preset("team", **TINY)).state_dict())
    assert {"blocks.0.attn.qkv_proj.weight", "blocks.0.attn.out_proj.weight", "blocks.0.attn.q_norm.weight",
            "blocks.0.attn.k_norm.weight"} <= names
    assert not any("reciprocal_on" in name for name in names)


def test_set_training_step_changes_nothing_without_reciprocal_parts():
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("gpt2", **TINY))
    idx = torch.randint(0, 96, (2, 8))
    before = model(idx)[0]
    model.set_training_step(0)
    torch.testing.assert_close(model(idx)[0], before)


def test_rmlp_is_initialised_like_the_standard_mlp():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("gpt2", n_layer=8, n_head=4, n_embd=256, vocab_size=1000, block_size=64,
                                  ffn_type="rmlp", attention_type="mla")
    model = build_model(cfg)
    expected = 0.02 / (2 * 8) ** 0.5
    assert model.blocks[3].ffn.down_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[3].attn.out_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[3].ffn.rec_up_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_last_only_gives_the_last_positions_logits_alone():
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("llama", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    idx = torch.randint(0, 50, (2, 9))
    full, _ = model(idx)
    last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, 50) and torch.allclose(last, full[:, -1:], atol=1e-6)
