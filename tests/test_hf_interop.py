"""Loading Hugging Face GPT-2 and Llama-family folders: tiny random models made with transformers
on the spot (no download) must give the same logits and greedy tokens through from_hf."""
import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from hf_interop import check_dataset_fits, check_init_from, from_hf  # noqa: E402
from model_config import ConfigError  # noqa: E402
from conftest import REPO_ROOT  # noqa: E402

VOCAB, POSITIONS = 96, 32


def randomize(hf_model, seed):
    """Weights far from the init (norm scales and biases included), so a misplaced tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in hf_model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3 + (parameter == 1).float())
    return hf_model.eval()


def save_gpt2(folder, tied, released_layout=False):
    """A tiny GPT-2; released_layout writes pytorch_model.bin with GPT2Model's names and the causal-mask
    buffers, as OpenAI's files on the hub have them."""
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=POSITIONS, vocab_size=VOCAB,
                                     tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None)
    model = randomize(transformers.GPT2LMHeadModel(config), seed=0)
    if released_layout:
        folder.mkdir()
        config.save_pretrained(folder)
        state = dict(model.transformer.state_dict())
        for i in range(config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(POSITIONS, POSITIONS)).view(1, 1, POSITIONS, POSITIONS)
        torch.save(state, folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder)
    return model


def save_llama(folder, tied, bias, model_type="llama"):
    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=POSITIONS, rope_theta=5000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None)
    if model_type == "mistral":
        config = transformers.MistralConfig(**common, sliding_window=16)
        model = transformers.MistralForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**common, attention_bias=bias, mlp_bias=bias)
        model = transformers.LlamaForCausalLM(config)
    model = randomize(model, seed=1)
    model.save_pretrained(folder)
    return model


def hf_reload(model_class, folder):
    return model_class.from_pretrained(folder, attn_implementation="eager").eval()


CASES = {
    "gpt2-tied-released-bin": lambda folder: save_gpt2(folder, tied=True, released_layout=True),
    "gpt2-untied-safetensors": lambda folder: save_gpt2(folder, tied=False),
    "llama-gqa-tied": lambda folder: save_llama(folder, tied=True, bias=False),
    "llama-gqa-untied-bias": lambda folder: save_llama(folder, tied=False, bias=True),
    "mistral-sliding-window": lambda folder: save_llama(folder, tied=False, bias=False, model_type="mistral"),
}


@pytest.fixture(scope="module", params=list(CASES))
def hf_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / request.param
    hf_model = CASES[request.param](folder)
    return request.param, folder, hf_model


def test_logits_and_greedy_tokens_match_transformers(hf_folder):
    case, folder, hf_model = hf_folder
    model, cfg = from_hf(folder)
    model.eval()
    assert cfg.arch_preset == ("gpt2" if case.startswith("gpt2") else "llama")
    assert cfg.weight_tying == ("-tied" in case)
    if cfg.arch_preset == "llama":
        assert (cfg.n_head, cfg.n_kv_head, cfg.rope_theta, cfg.ffn_hidden_size) == (4, 2, 5000.0, 96)
        assert cfg.bias == ("bias" in case)
        # Mistral's sliding window is full attention up to its length, so the context stops there
        assert cfg.block_size == (16 if case.startswith("mistral") else POSITIONS)
    idx = torch.randint(0, VOCAB, (2, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf_model(idx).logits
        logits, _ = model(idx)
    assert logits.shape == expected.shape == (2, 14, VOCAB)
    assert expected.abs().max() > 1  # far from zero, so the tolerance below is meaningful
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    prompt = idx[:1, :5]
    expected_tokens = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                                        do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, 8, top_k=1), expected_tokens)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    return folder, save_gpt2(folder, tied=True)


def test_free_overrides_accepted_and_block_size_crops_positions(gpt2_folder):
    folder, hf_model = gpt2_folder
    model, cfg = from_hf(folder, dropout=0.1, attention_backend="manual", block_size=16, n_layer=2)
    assert (cfg.dropout, cfg.attention_backend, cfg.block_size) == (0.1, "manual", 16)
    assert model.position.wpe.weight.shape == (16, 32)
    idx = torch.arange(10).view(1, 10)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx)[0], hf_model(idx).logits, atol=1e-4, rtol=0)


def test_contradicting_overrides_are_refused_by_name(gpt2_folder):
    folder, _ = gpt2_folder
    with pytest.raises(ConfigError) as error:
        from_hf(folder, n_layer=3, normalization="rmsnorm", block_size=64)
    message = str(error.value)
    assert "n_layer=3 (the weights have n_layer=2)" in message
    assert "normalization='rmsnorm' (the weights have normalization='layernorm')" in message
    assert "block_size=64 (the weights hold learned positions for 32 tokens" in message
    with pytest.raises(ConfigError, match="'n_layers' is not a ModelConfig option. Did you mean 'n_layer'"):
        from_hf(folder, n_layers=2)


def test_unknown_path_suggests_hub_name(tmp_path):
    with pytest.raises(ConfigError, match="init_from='gpt-2' is not a folder.*Did you mean 'gpt2'"):
        from_hf("gpt-2")
    with pytest.raises(ConfigError, match="has no config.json"):
        from_hf(tmp_path)


def test_init_from_values(gpt2_folder):
    folder, _ = gpt2_folder
    for accepted in ("scratch", "resume", "gpt2-xl", str(folder)):
        check_init_from(accepted)
    with pytest.raises(ConfigError, match="init_from='gpt2_xl' is not a folder.*Did you mean 'gpt2-xl'"):
        check_init_from("gpt2_xl")


def test_dataset_must_fit_the_pretrained_vocabulary(gpt2_folder):
    _, cfg = from_hf(gpt2_folder[0])
    check_dataset_fits("gpt2", cfg, {"tokenizer": "gpt2", "vocab_size": 50})
    with pytest.raises(ConfigError, match="init_from='gpt2' reads GPT-2's BPE tokens, but the dataset was "
                                          "prepared with the 'char' tokenizer"):
        check_dataset_fits("gpt2", cfg, {"tokenizer": "char", "vocab_size": 65})
    with pytest.raises(ConfigError, match="the dataset has 50257 token ids but the model .* has vocab_size=96"):
        check_dataset_fits("some/folder", cfg, {"tokenizer": "gpt2", "vocab_size": 50257})


def test_unsupported_hf_options_are_refused(tmp_path):
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, vocab_size=VOCAB, hidden_act="tanh",
                                      rope_scaling={"rope_type": "linear", "factor": 2.0})
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as error:
        from_hf(tmp_path)
    assert "activation 'tanh'" in str(error.value) and "RoPE scaling 'linear'" in str(error.value)


def test_hub_name_without_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ConfigError, match="transformers library, which is not installed. Install it with: pip"):
        from_hf("gpt2-medium")


def test_hub_name_offline_gives_clear_error(tmp_path):
    # a fresh interpreter: the hub library reads HF_HUB_OFFLINE and its cache folder at import time
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = ("from hf_interop import from_hf\nfrom model_config import ConfigError\n"
            "try:\n    from_hf('gpt2')\nexcept ConfigError as error:\n    print(error)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert "init_from='gpt2' could not get the weights from the Hugging Face hub" in result.stdout, result.stderr
    assert "pass init_from=PATH" in result.stdout
