import pytest
import torch

from model_builder import build_model
from model_components import (ATTENTION_BACKENDS, ATTENTION_TYPES, FFN_TYPES, NORMALIZATIONS, POSITION_ENCODINGS,
                              REGISTRIES, Registry, UnknownComponentError, manual_attention, sdpa_attention)
from model_config import ModelConfig

TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50)


def _kinds_and_names():
    return [(kind, name) for kind, registry in REGISTRIES.items() for name in registry.names()]


@pytest.mark.parametrize("kind,name", _kinds_and_names())
def test_every_component_in_every_slot_trains(kind, name):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("custom", **TINY, **{kind: name})
    model = build_model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    logits, loss = model(idx, torch.roll(idx, -1, dims=1))
    loss.backward()
    assert logits.shape == (2, cfg.block_size, cfg.vocab_size)
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_unknown_name_lists_registered_names():
    with pytest.raises(UnknownComponentError) as info:
        NORMALIZATIONS.get("rmsnorn")
    message = str(info.value)
    assert "layernorm, layernorm_nobias, rmsnorm" in message
    assert "Did you mean 'rmsnorm'" in message


def test_registering_a_component_makes_it_selectable():
    registry = Registry("thing")

    @registry.register("mine")
    class Mine:
        pass

    assert registry.get("mine") is Mine and registry.names() == ["mine"]
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("mine")(Mine)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_and_manual_attention_agree(n_kv_head, causal):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 7, 8, dtype=torch.float64)
    k, v = torch.randn(2, n_kv_head, 7, 8, dtype=torch.float64), torch.randn(2, n_kv_head, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(sdpa_attention(q, k, v, causal, 0.0), manual_attention(q, k, v, causal, 0.0))


def test_manual_attention_masks_the_future_for_queries_at_the_end():
    # one query attending to a longer key sequence (decoding) sees every key
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 1, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    full = manual_attention(torch.cat([torch.randn(1, 1, 4, 4), q], dim=2), k, v, True, 0.0)[:, :, -1:]
    torch.testing.assert_close(manual_attention(q, k, v, False, 0.0), full)


def test_rope_scores_depend_only_on_relative_position():
    cfg = ModelConfig.from_preset("llama", **TINY)
    rope = POSITION_ENCODINGS.get("rope")(cfg)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, cfg.head_dim), torch.randn(1, 1, 1, cfg.head_dim)

    def score(query_pos, key_pos):
        q_rot, _ = rope.rotate(q, q, torch.tensor([query_pos]))
        _, k_rot = rope.rotate(k, k, torch.tensor([key_pos]))
        return (q_rot * k_rot).sum()

    torch.testing.assert_close(score(5, 2), score(12, 9))
    torch.testing.assert_close(score(3, 3), score(0, 0))
    assert not torch.allclose(score(5, 2), score(5, 4))


def test_rope_matches_complex_rotation():
    # reference: each pair (x_i, x_{i+d/2}) rotated by angle pos * theta^(-2i/d)
    cfg = ModelConfig.from_preset("llama", **TINY)
    rope = POSITION_ENCODINGS.get("rope")(cfg)
    d = cfg.head_dim
    x = torch.randn(1, 1, 3, d, dtype=torch.float64)
    positions = torch.tensor([0, 4, 9])
    rotated, _ = rope.rotate(x.float(), x.float(), positions)
    freqs = cfg.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions[:, None].double() * freqs
    z = torch.complex(x[..., : d // 2], x[..., d // 2:]) * torch.polar(torch.ones_like(angle), angle)
    torch.testing.assert_close(rotated.double(), torch.cat([z.real, z.imag], dim=-1), atol=1e-5, rtol=1e-5)


def test_grouped_query_with_all_heads_equals_multi_head_attention():
    torch.manual_seed(0)
    mha = build_model(ModelConfig.from_preset("llama", **TINY))
    torch.manual_seed(0)
    gqa = build_model(ModelConfig.from_preset("llama", **TINY, n_kv_head=TINY["n_head"]))
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(mha(idx)[0], gqa(idx)[0])


def test_grouped_query_shares_each_kv_head_across_its_query_heads():
    cfg = ModelConfig.from_preset("llama", **TINY, n_kv_head=2)
    model = build_model(cfg)
    attn = model.blocks[0].attn
    assert attn.qkv_proj.weight.shape == ((4 + 2 * 2) * cfg.head_dim, cfg.n_embd)
    # query heads 0,1 use kv head 0 and heads 2,3 use kv head 1: duplicating kv heads reproduces it
    q = torch.randn(1, 4, 5, cfg.head_dim)
    k, v = torch.randn(1, 2, 5, cfg.head_dim), torch.randn(1, 2, 5, cfg.head_dim)
    expanded = manual_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), True, 0.0)
    torch.testing.assert_close(manual_attention(q, k, v, True, 0.0), expanded)


def test_ffn_registry_has_flops_for_every_ffn_and_position_encoding():
    cfg = ModelConfig.from_preset("custom", **TINY)
    for name in FFN_TYPES.names():
        assert FFN_TYPES.get(name).forward_flops_per_token(cfg) > 0
    for name in POSITION_ENCODINGS.names():
        assert POSITION_ENCODINGS.get(name).forward_flops_per_token(cfg) >= 0
    assert ATTENTION_BACKENDS.names() == ["sdpa", "manual"]


def test_every_attention_type_reports_flops_and_its_kv_cache():
    cfg = ModelConfig.from_preset("llama", **TINY)
    assert ATTENTION_TYPES.names() == ["mha", "reciprocal", "mla"]
    for name in ATTENTION_TYPES.names():
        options = {"ra_rank": 2} if name == "reciprocal" else {}
        typed = ModelConfig.from_preset("llama", **TINY, attention_type=name, **options)
        flops = ATTENTION_TYPES.get(name).forward_flops_per_token(typed, 16)
        assert set(flops) == {"attention_proj", "attention_scores", "position_encoding"}
        assert min(flops.values()) > 0
        keys, values = ATTENTION_TYPES.get(name).kv_cache_elements_per_token(typed)
        assert keys > 0 and values >= 0
    assert ATTENTION_TYPES.get("mha").kv_cache_elements_per_token(cfg) == (2 * 32, 2 * 32)


@pytest.mark.parametrize("n_kv_head", [4, 1])
def test_sdpa_pads_values_narrower_than_the_keys(n_kv_head):
    # MLA's queries and keys carry a rope part the values lack
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 7, 12, dtype=torch.float64), torch.randn(2, n_kv_head, 7, 12, dtype=torch.float64)
    v = torch.randn(2, n_kv_head, 7, 8, dtype=torch.float64)
    out = sdpa_attention(q, k, v, True, 0.0)
    assert out.shape == (2, 4, 7, 8)
    torch.testing.assert_close(out, manual_attention(q, k, v, True, 0.0))


def test_an_additive_mask_replaces_the_causal_flag_in_both_backends():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64) for _ in range(3))
    mask = torch.zeros(5, 5, dtype=torch.float64).masked_fill(torch.rand(5, 5) < 0.3, float("-inf"))
    mask.fill_diagonal_(0.0)
    expected = torch.softmax(q @ k.transpose(-2, -1) / 2 + mask, dim=-1) @ v
    torch.testing.assert_close(manual_attention(q, k, v, True, 0.0, mask=mask), expected)
    torch.testing.assert_close(sdpa_attention(q, k, v, True, 0.0, mask=mask), expected)
