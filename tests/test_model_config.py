import pytest

from model_components import UnknownComponentError
from model_config import ConfigError, ModelConfig, PRESETS, list_presets


def test_presets_choose_the_documented_components():
    gpt2 = ModelConfig.from_preset("gpt2")
    assert (gpt2.normalization, gpt2.position_encoding, gpt2.activation, gpt2.ffn_type, gpt2.norm_position,
            gpt2.bias, gpt2.weight_tying) == ("layernorm", "learned_absolute", "gelu", "standard", "pre", True, True)
    llama = ModelConfig.from_preset("llama")
    assert (llama.normalization, llama.position_encoding, llama.ffn_type, llama.bias, llama.weight_tying) == \
        ("rmsnorm", "rope", "swiglu", False, False)
    team = ModelConfig.from_preset("team")
    assert team.n_kv_head == team.n_head // 4 and team.qk_norm
    assert ModelConfig.from_preset("team", n_head=16, n_embd=1024).n_kv_head == 4
    hybrid = ModelConfig.from_preset("hybrid")
    assert (hybrid.normalization, hybrid.position_encoding, hybrid.ffn_type, hybrid.weight_tying) == \
        ("rmsnorm", "rope", "standard", True)


def test_options_override_the_preset():
    cfg = ModelConfig.from_preset("gpt2", normalization="rmsnorm", n_layer=2)
    assert cfg.normalization == "rmsnorm" and cfg.n_layer == 2 and cfg.arch_preset == "gpt2"


def test_swiglu_hidden_size_follows_llama_rounding():
    assert ModelConfig.from_preset("llama").ffn_hidden_size == 2048  # 8/3*768 = 2048
    assert ModelConfig.from_preset("llama", n_embd=1024, n_head=16).ffn_hidden_size == 2816  # 2730.7 -> 2816
    assert ModelConfig.from_preset("gpt2").ffn_hidden_size == 3072


def test_arch_names_encode_every_choice():
    assert ModelConfig.from_preset("gpt2").arch_name == "12L-12H-768D-AbsPos-LN-GELU-MLP-PreNorm-Tied-Bias"
    assert ModelConfig.from_preset("team").arch_name == "12L-12H-3KV-768D-RoPE-RMS-SiLU-GLU-PreNorm-QKNorm-Untied"
    names = {ModelConfig.from_preset(p).arch_name for p in PRESETS}
    assert len(names) == len(PRESETS) - 1  # custom's defaults are GPT-2's choices
    assert ModelConfig.from_preset("gpt2", norm_position="post", dropout=0.1).arch_name.endswith(
        "PostNorm-Tied-Bias-Drop0.1")


def test_arch_names_encode_research_components_only_when_chosen():
    assert ModelConfig.from_preset("llama", attention_type="mla").arch_name == \
        "12L-12H-768D-MLA256r32-RoPE-RMS-SiLU-GLU-PreNorm-Untied"
    assert ModelConfig.from_preset("gpt2", attention_type="reciprocal", ra_self_restart=True, ffn_type="rmlp",
                                   rmlp_rank=64, rmlp_mixer=True, rmlp_gates=True, ra_delay_steps=100).arch_name == \
        "12L-12H-768D-RA4SR-AbsPos-LN-GELU-RMLP64MixGate-PreNorm-Tied-Bias-Delay100"
    assert ModelConfig.from_preset("gpt2", kv_pruning="learned", kv_prune_values_only=True).arch_name.endswith(
        "-Bias-KVPLearned0.382r64V")


@pytest.mark.parametrize("overrides,needle", [
    (dict(n_embd=100, n_head=12), "n_embd=100 must be divisible by n_head=12"),
    (dict(n_head=12, n_kv_head=5), "n_head=12 must be divisible by n_kv_head=5"),
    (dict(n_embd=36, n_head=12, position_encoding="rope"), "even head size"),
    (dict(dropout=1.0), "0 <= dropout < 1"),
    (dict(n_layer=0), "n_layer=0 is invalid"),
    (dict(norm_position="middle"), "Accepted values: pre, post"),
    (dict(attention_type="reciprocal", ra_rank=64), "ra_rank=64 is invalid: .* ra_rank < head_dim = .* = 64"),
    (dict(attention_type="mla", kv_latent_dim=0), "kv_latent_dim=0 is invalid: it must be a positive integer"),
    (dict(attention_type="mla", position_encoding="rope", mla_rope_dim=7), "mla_rope_dim=7 is invalid: .* even"),
    (dict(attention_type="mla", mla_rope_dim=8), "mla_rope_dim=8 is only used with position_encoding='rope'"),
    (dict(kv_latent_dim=64), "kv_latent_dim=64 is only used by attention_type='mla', but attention_type is 'mha'"),
    (dict(rmlp_gates=True), "rmlp_gates=True is only used by ffn_type='rmlp'"),
    (dict(ffn_type="rmlp", rmlp_rank=3072), "rmlp_rank=3072 is invalid: .* rmlp_rank < ffn_hidden_size = 3072"),
    (dict(kv_pruning="fixed", kv_keep_ratio=0), "kv_keep_ratio=0 is invalid: it must satisfy 0 < kv_keep_ratio <= 1"),
    (dict(kv_pruning="fixed", kv_keep_ratio=1.5), "kv_keep_ratio=1.5 is invalid"),
    (dict(kv_pruning="fixed", kv_keep_recent=0), "kv_keep_recent=0 is invalid: it must be a positive integer"),
    (dict(kv_pruning="fixd"), "kv_pruning='fixd' is not accepted. Accepted values: none, fixed, learned. Did you mean"),
    (dict(kv_pruning="v_only"), "set kv_prune_values_only=True beside kv_pruning='fixed' or 'learned'"),
    (dict(kv_prune_values_only=True), "kv_prune_values_only=True .* kv_pruning is 'none'"),
    (dict(attention_type="mla", kv_pruning="fixed"), "kv_pruning='fixed' is not implemented for attention_type='mla'"),
    (dict(ra_delay_steps=10), "ra_delay_steps=10 delays a reciprocal part, but there is none"),
    (dict(ffn_type="rmlp", ra_delay_steps=-1), "ra_delay_steps=-1 is invalid: it must be a non-negative integer"),
])
def test_invalid_configs_are_explained(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        ModelConfig.from_preset("custom", **overrides)


def test_unknown_component_lists_registered_names():
    with pytest.raises(UnknownComponentError, match="Registered activation names: gelu, gelu_exact, silu"):
        ModelConfig(activation="swish")
    with pytest.raises(UnknownComponentError, match="mha, reciprocal, mla.* Did you mean 'mla'"):
        ModelConfig(attention_type="mlla")


def test_research_defaults_follow_the_head_size_and_leave_presets_alone():
    mla = ModelConfig.from_preset("llama", attention_type="mla")
    assert (mla.kv_latent_dim, mla.mla_rope_dim) == (256, 32)
    assert ModelConfig.from_preset("gpt2", attention_type="mla").mla_rope_dim == 0  # no rope: no rope part
    assert ModelConfig.from_preset("gpt2", attention_type="reciprocal").ra_rank == 4  # 64 = 60 + 4
    assert ModelConfig.from_preset("gpt2", ffn_type="rmlp").rmlp_rank == 768
    gpt2 = ModelConfig.from_preset("gpt2")
    assert (gpt2.attention_type, gpt2.kv_latent_dim, gpt2.ra_rank, gpt2.rmlp_rank, gpt2.kv_pruning) == \
        ("mha", None, None, None, "none")


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'llama'"):
        ModelConfig.from_preset("lama")


def test_config_is_frozen():
    with pytest.raises(Exception):
        ModelConfig().n_layer = 3


def test_list_presets_prints_every_preset_and_gpt2_size(capsys):
    list_presets()
    out = capsys.readouterr().out
    for name in list(PRESETS) + ["124M", "350M", "774M", "1.5B"]:
        assert name in out
