"""Exporting to Hugging Face: transformers loads what to_hf writes and computes the same logits,
from_hf reads it back bit for bit, and architectures neither family expresses are refused."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import export_hf  # noqa: E402
from checkpointing import atomic_save  # noqa: E402
from hf_interop import export_problems, from_hf, to_hf  # noqa: E402
from model_builder import build_model  # noqa: E402
from model_config import ModelConfig  # noqa: E402
from token_shards import DataError  # noqa: E402
from tokenizer import GPT2Tokenizer  # noqa: E402

TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=96)


def random_model(cfg, seed=0):
    """A model whose every parameter (norm scales and biases too) is far from its init."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model.eval()


EXPORTABLE = {
    "gpt2-tied": ModelConfig.from_preset("gpt2", **TINY),
    "gpt2-untied-relu": ModelConfig.from_preset("gpt2", **TINY, weight_tying=False, activation="relu",
                                                ffn_hidden_size=80),
    "llama-gqa-tied": ModelConfig.from_preset("llama", **{**TINY, "n_embd": 64}, n_kv_head=2, rope_theta=5000.0,
                                              weight_tying=True),
    "llama-untied-bias-geglu": ModelConfig.from_preset("llama", **TINY, bias=True, activation="gelu_exact",
                                                       ffn_hidden_size=96),
}


@pytest.mark.parametrize("name", list(EXPORTABLE))
def test_transformers_loads_the_export_and_it_round_trips(name, tmp_path):
    cfg = EXPORTABLE[name]
    model = random_model(cfg)
    to_hf(model, tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(hf_model).__name__ == ("GPT2LMHeadModel" if name.startswith("gpt2") else "LlamaForCausalLM")
    idx = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = model(idx)
        assert expected.abs().max() > 1
        torch.testing.assert_close(hf_model(idx).logits, expected, atol=1e-4, rtol=0)
    reloaded, reloaded_cfg = from_hf(tmp_path)
    assert reloaded_cfg == cfg
    original, again = model.state_dict(), reloaded.state_dict()
    assert original.keys() == again.keys()
    assert all(torch.equal(original[key], again[key]) for key in original)


def keys_of(problems):
    return [problem.split("=")[0] for problem in problems]


@pytest.mark.parametrize("preset, overrides, refused_keys", [
    ("gpt2", dict(norm_position="post"), ["norm_position"]),
    ("gpt2", dict(ffn_type="swiglu"), ["ffn_type"]),  # learned positions with a gated MLP: neither family
    ("gpt2", dict(normalization="rmsnorm", qk_norm=True), ["normalization", "qk_norm"]),
    ("gpt2", dict(normalization="layernorm_nobias", bias=False), ["normalization", "bias"]),
    ("gpt2", dict(n_kv_head=2), ["n_kv_head"]),
    ("llama", dict(normalization="layernorm_nobias"), ["normalization"]),
    ("llama", dict(norm_position="post", ffn_type="standard"), ["norm_position", "ffn_type"]),
    ("team", {}, ["qk_norm"]),
    ("hybrid", {}, ["ffn_type"]),
    ("gpt2", dict(position_encoding="none"), ["position_encoding"]),
    ("gpt2", dict(activation="leaky_relu", weight_tying=False), []),
    ("llama", dict(bias=True, n_kv_head=1, weight_tying=True), []),
])
def test_export_problems_name_what_each_family_cannot_express(preset, overrides, refused_keys):
    cfg = ModelConfig.from_preset(preset, **TINY, **overrides)
    assert keys_of(export_problems(cfg)) == refused_keys


def write_checkpoint(path, cfg, tokenizer_meta, seed=0):
    model = random_model(cfg, seed)
    # as saved from a compiled model: the export must clean the names
    state = {f"_orig_mod.{name}": tensor for name, tensor in model.state_dict().items()}
    atomic_save({"model": state, "model_config": cfg.to_dict(), "arch_name": cfg.arch_name, "step": 7,
                 "val_loss": 1.5, "tokenizer": tokenizer_meta}, path)
    return model


def gpt2_tokenizer_or_skip():
    try:
        return GPT2Tokenizer()
    except (DataError, OSError, ValueError) as error:  # tiktoken missing, or its BPE files cannot be fetched
        pytest.skip(f"GPT-2 BPE files unavailable: {error}")


def test_cli_exports_a_run_with_gpt2_tokenizer_files(tmp_path, capsys):
    tokenizer = gpt2_tokenizer_or_skip()
    cfg = ModelConfig.from_preset("gpt2", **{**TINY, "n_layer": 1, "vocab_size": 50304})
    model = write_checkpoint(tmp_path / "checkpoints" / "run1" / "best_model.pt", cfg, tokenizer.meta)
    out = tmp_path / "out"
    export_hf.main(["--run", "run1", "--which", "best", "--checkpoints_dir", str(tmp_path / "checkpoints"),
                    "--out", str(out)])
    assert f"to {out}" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "vocab.json", "merges.txt",
                                              "tokenizer_config.json", "special_tokens_map.json"}
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["eos_token_id"], config["n_positions"]) == (50304, 50256, 32)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = "ROMEO:\n  But, soft! what light through yonder window breaks?\t 1234 naïve café 😀 don't  "
    assert hf_tokenizer.encode(text) == tokenizer.encode(text)
    assert hf_tokenizer.decode(tokenizer.encode(text)) == text
    reloaded, _ = from_hf(out)
    assert all(torch.equal(tensor, reloaded.state_dict()[name]) for name, tensor in model.state_dict().items())


def test_cli_refuses_post_norm_and_writes_nothing(tmp_path, capsys):
    checkpoint = tmp_path / "latest.pt"
    write_checkpoint(checkpoint, ModelConfig.from_preset("gpt2", **TINY, norm_position="post"),
                     {"tokenizer": "char", "vocab_size": 65, "chars": "abc"})
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        export_hf.main(["--checkpoint", str(checkpoint), "--out", str(out)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "cannot be exported to Hugging Face" in message and "GPT-2 (GPT2LMHeadModel)" in message
    assert "norm_position='post': GPT2LMHeadModel normalises before each sub-block" in message
    assert not out.exists()


def test_cli_exports_char_run_without_tokenizer_files(tmp_path, capsys):
    checkpoint = tmp_path / "latest.pt"
    write_checkpoint(checkpoint, EXPORTABLE["llama-gqa-tied"], {"tokenizer": "char", "vocab_size": 65, "chars": "ab"})
    export_hf.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")])
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"config.json", "model.safetensors"}
    assert "no tokenizer files: the run's tokenizer (char)" in capsys.readouterr().out


def test_cli_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at .*nope/latest.pt"):
        export_hf.main(["--run", "nope", "--checkpoints_dir", str(tmp_path)])
