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


@pytest.mark.parametrize("overrides,needle", [
    (dict(n_embd=100, n_head=12), "n_embd=100 must be divisible by n_head=12"),
    (dict(n_head=12, n_kv_head=5), "n_head=12 must be divisible by n_kv_head=5"),
    (dict(n_embd=36, n_head=12, position_encoding="rope"), "even head size"),
    (dict(dropout=1.0), "0 <= dropout < 1"),
    (dict(n_layer=0), "n_layer=0 is invalid"),
    (dict(norm_position="middle"), "Accepted values: pre, post"),
])
def test_invalid_configs_are_explained(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        ModelConfig.from_preset("custom", **overrides)


def test_unknown_component_lists_registered_names():
    with pytest.raises(UnknownComponentError, match="Registered activation names: gelu, gelu_exact, silu"):
        ModelConfig(activation="swish")


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
