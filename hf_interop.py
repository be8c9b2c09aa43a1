"""Hugging Face interop: start from GPT-2 or Llama-family weights, and export trained models.

    model, cfg = from_hf("gpt2")               # OpenAI's weights, through transformers
    model, cfg = from_hf("path/to/hf_folder")  # config.json + safetensors or bin: GPT-2, Llama, Mistral
    to_hf(model, "exports/run", tokenizer_meta={"tokenizer": "gpt2", "vocab_size": 50257})

Two Hugging Face families can carry the project's GPT, chosen by its position encoding:
  learned_absolute -> GPT-2 (GPT2LMHeadModel): pre-norm LayerNorm with bias, ungated MLP, biases,
                      plain multi-head attention, tied or untied head
  rope             -> Llama (LlamaForCausalLM): pre-norm RMSNorm, gated MLP (swiglu), with or
                      without biases, grouped-query attention, tied or untied head, any rope_theta
export_problems(cfg) names every option outside these. Local folders are read without
transformers (only safetensors, for .safetensors files); the gpt2 hub names need transformers.

The GPT-2 tokenizer files written on export (vocab.json, merges.txt) are derived from tiktoken's
gpt2 encoding, whose ranks are OpenAI's token ids, so exporting needs no download.
"""
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from checkpointing import clean_state_dict
from model_builder import build_model
from model_components import did_you_mean
from model_config import ConfigError, ModelConfig
from tokenizer import GPT2Tokenizer

GPT2_HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
LLAMA_MODEL_TYPES = ("llama", "mistral")
# options that change training, not what the weights compute; block_size has its own rule
FREE_OVERRIDES = ("dropout", "attention_backend", "init_std")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# GPT-2's causal-mask buffers (old files) and Llama's RoPE frequencies are derived, not learned
_DERIVED_TENSORS = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$")
EOT_TEXT = "<|endoftext|>"

# our activation name -> Hugging Face ACT2FN name (GPT-2's own config says gelu_new: the tanh GELU)
HF_ACTIVATIONS = {"gelu": "gelu_new", "gelu_exact": "gelu", "silu": "silu", "relu": "relu",
                  "leaky_relu": "leaky_relu"}
OUR_ACTIVATIONS = {**{hf: ours for ours, hf in HF_ACTIVATIONS.items()}, "gelu_pytorch_tanh": "gelu",
                   "swish": "silu"}


# ---------------------------------------------------------------- importing

def from_hf(name_or_path, **overrides):
    """(GPT, ModelConfig) from a gpt2 hub name or a local Hugging Face folder.

    overrides may set dropout, attention_backend and init_std freely, and block_size within what
    the weights allow (any value with RoPE; at most the learned position table, which is then
    cropped). Other ModelConfig keys are accepted only at the value the weights imply.
    """
    name_or_path = str(name_or_path)
    if name_or_path in GPT2_HUB_NAMES:
        hf_config, hf_state = _load_from_hub(name_or_path)
        source = f"init_from={name_or_path!r}"
    else:
        folder = _local_folder(name_or_path)
        hf_config, hf_state = json.loads((folder / "config.json").read_text()), _read_weights(folder)
        source = f"the Hugging Face folder {folder}"
    cfg = _with_overrides(_config_from_hf(hf_config, source), overrides, source)
    model = build_model(cfg)
    model.load_state_dict(_import_state(hf_state, cfg, source))
    return model, cfg


def check_init_from(init_from):
    """ConfigError unless init_from is scratch, resume, a gpt2 hub name or a Hugging Face folder."""
    if init_from not in ("scratch", "resume", *GPT2_HUB_NAMES):
        _local_folder(init_from)


def check_dataset_fits(init_from, cfg, dataset_meta):
    """ConfigError when a dataset's token ids cannot feed the model loaded from init_from (cfg)."""
    tokenizer, vocab_size = dataset_meta.get("tokenizer"), dataset_meta.get("vocab_size", 0)
    if init_from in GPT2_HUB_NAMES and tokenizer != "gpt2":
        raise ConfigError(f"init_from={init_from!r} reads GPT-2's BPE tokens, but the dataset was prepared with the "
                          f"{tokenizer!r} tokenizer. Use a GPT-2-tokenized dataset (e.g. python "
                          f"data/shakespeare/prepare.py, then dataset='shakespeare').")
    if vocab_size > cfg.vocab_size:
        raise ConfigError(f"the dataset has {vocab_size} token ids but the model from init_from={init_from!r} has "
                          f"vocab_size={cfg.vocab_size}; prepare the dataset with the model's own tokenizer.")


def _local_folder(path):
    folder = Path(path)
    if (folder / "config.json").is_file():
        return folder
    accepted = ("scratch", "resume", *GPT2_HUB_NAMES)
    hint = did_you_mean(path, accepted)
    what = "has no config.json" if folder.is_dir() else "is not a folder"
    raise ConfigError(f"init_from={str(path)!r} {what}. Accepted: {', '.join(accepted)}, or the path of a "
                      f"Hugging Face model folder (config.json plus model.safetensors or pytorch_model.bin).{hint}")


def _load_from_hub(name):
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise ConfigError(f"init_from={name!r} loads OpenAI's GPT-2 weights through the transformers library, "
                          f"which is not installed. Install it with: pip install transformers safetensors") from None
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(name)
    except OSError as error:
        reason = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"init_from={name!r} could not get the weights from the Hugging Face hub: {reason} Check the internet "
            f"connection (and that HF_HUB_OFFLINE is unset), or download them on a machine with internet: "
            f"python -c \"from transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained('{name}')"
            f".save_pretrained('{name}-hf')\", then pass init_from=PATH of that folder.") from None
    return hf_model.config.to_dict(), hf_model.state_dict()


def _read_weights(folder):
    """All tensors of a folder: one file, or the shards its *.index.json lists."""
    for name in WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (folder / name).is_file():
            files = [name]
        else:
            continue
        state = {}
        for file in files:
            state.update(_read_weight_file(folder / file))
        return state
    raise ConfigError(f"{folder} has a config.json but no weights: expected {' or '.join(WEIGHT_FILES)} "
                      f"(or a sharded *.index.json).")


def _read_weight_file(path):
    if path.suffix == ".bin":
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(f"reading {path} needs the safetensors package, which is not installed. "
                          f"Install it with: pip install safetensors") from None
    return load_file(path)


def _config_from_hf(hf, source):
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        return _gpt2_config(hf, source)
    if model_type in LLAMA_MODEL_TYPES:
        return _llama_config(hf, source)
    raise ConfigError(f"{source} holds a model of type {model_type!r}; the project reads GPT-2 (model_type 'gpt2') "
                      f"and Llama-architecture models (model_type {' or '.join(map(repr, LLAMA_MODEL_TYPES))}).")


def _gpt2_config(hf, source):
    problems = _activation_problems(hf.get("activation_function", "gelu_new"))
    if not hf.get("scale_attn_weights", True):
        problems.append("scale_attn_weights=False (attention scores not divided by sqrt(head_dim))")
    if hf.get("scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx=True (attention scores scaled by layer depth)")
    if hf.get("add_cross_attention", False):
        problems.append("add_cross_attention=True (an encoder-decoder model)")
    _refuse(problems, source)
    return ModelConfig.from_preset(
        "gpt2", n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], block_size=hf["n_positions"],
        vocab_size=hf["vocab_size"], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=OUR_ACTIVATIONS.get(hf.get("activation_function", "gelu_new")),
        ffn_hidden_size=hf.get("n_inner") or 4 * hf["n_embd"], weight_tying=hf.get("tie_word_embeddings", True))


def _llama_config(hf, source):
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    problems = _activation_problems(hf.get("hidden_act", "silu"))
    if hf.get("head_dim") not in (None, n_embd // n_head) or n_embd % n_head:
        problems.append(f"head_dim={hf.get('head_dim')} differs from hidden_size/num_attention_heads = "
                        f"{n_embd}/{n_head} (the project's heads are n_embd/n_head wide)")
    # transformers 5 keeps rope_theta in rope_parameters; 4.x has rope_theta and rope_scaling
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        problems.append(f"RoPE scaling {rope_type!r} (the project implements plain RoPE only)")
    if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
        problems.append(f"attention_bias={hf.get('attention_bias', False)} with mlp_bias={hf.get('mlp_bias', False)} "
                        f"(the project's bias option covers both)")
    _refuse(problems, source)
    # Mistral's sliding window equals full causal attention for sequences no longer than the window
    window = hf.get("sliding_window")
    block_size = min(hf["max_position_embeddings"], window or hf["max_position_embeddings"])
    return ModelConfig.from_preset(
        "llama", n_layer=hf["num_hidden_layers"], n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head,
        n_embd=n_embd, block_size=block_size, vocab_size=hf["vocab_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation=OUR_ACTIVATIONS.get(hf.get("hidden_act", "silu")), ffn_hidden_size=hf["intermediate_size"],
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        bias=hf.get("attention_bias", False), weight_tying=hf.get("tie_word_embeddings", False))


def _activation_problems(hf_activation):
    if hf_activation in OUR_ACTIVATIONS:
        return []
    return [f"activation {hf_activation!r} (the project has {', '.join(sorted(OUR_ACTIVATIONS))})"]


def _refuse(problems, source):
    if problems:
        raise ConfigError(f"{source} cannot be loaded exactly, because the project's GPT does not implement: "
                          f"{'; '.join(problems)}.")


def _with_overrides(cfg, overrides, source):
    """cfg with the overrides that do not contradict the weights; ConfigError naming all others."""
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    for key in overrides:
        if key not in fields:
            raise ConfigError(f"{key!r} is not a ModelConfig option.{did_you_mean(key, fields)}")
    contradictions = [f"{key}={value!r} (the weights have {key}={getattr(cfg, key)!r})"
                      for key, value in overrides.items()
                      if key not in FREE_OVERRIDES + ("block_size",) and value != getattr(cfg, key)]
    block_size = overrides.get("block_size", cfg.block_size)
    if cfg.position_encoding == "learned_absolute" and block_size > cfg.block_size:
        contradictions.append(f"block_size={block_size} (the weights hold learned positions for "
                              f"{cfg.block_size} tokens; a smaller block_size crops them)")
    if contradictions:
        raise ConfigError(f"{source} fixes the architecture through its weights, and these options contradict it: "
                          f"{'; '.join(contradictions)}. Remove them; {', '.join(FREE_OVERRIDES)} and block_size "
                          f"(up to the weights' positions) may change.")
    return dataclasses.replace(cfg, **overrides)


def _import_state(hf_state, cfg, source):
    hf_state = _with_gpt2_prefix(hf_state) if hf_family(cfg) == "gpt2" else hf_state
    tensors = _tensor_map(cfg)
    missing = [name for t in tensors for name in t.hf if name not in hf_state]
    used = {name for t in tensors for name in t.hf} | {"lm_head.weight"}  # a tied head may be saved anyway
    unexpected = [name for name in hf_state if name not in used and not _DERIVED_TENSORS.search(name)]
    if missing or unexpected:
        raise ConfigError(f"the weights of {source} do not fit its config: missing {missing[:5] or 'none'}, "
                          f"unexpected {unexpected[:5] or 'none'}.")
    state = {}
    for t in tensors:
        parts = [hf_state[name].t() if t.transposed else hf_state[name] for name in t.hf]
        state[t.ours] = torch.cat(parts) if len(parts) > 1 else parts[0]
    if cfg.weight_tying:
        state["lm_head.weight"] = state["wte.weight"]
    if "position.wpe.weight" in state:  # block_size may crop the learned positions
        state["position.wpe.weight"] = state["position.wpe.weight"][:cfg.block_size]
    return state


def _with_gpt2_prefix(hf_state):
    # the released GPT-2 files hold GPT2Model's names (h.0..., wte...), GPT2LMHeadModel's add "transformer."
    return {(name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"): tensor
            for name, tensor in hf_state.items()}


# ---------------------------------------------------------------- the name maps

@dataclass(frozen=True)
class _Tensor:
    ours: str
    hf: tuple  # Hugging Face names, concatenated along rows into ours (Llama's q, k, v -> qkv_proj)
    transposed: bool = False  # GPT-2's Conv1D stores weights as (in, out)


def hf_family(cfg):
    """'gpt2', 'llama' or None: the Hugging Face family that could carry cfg, by its positions."""
    return {"learned_absolute": "gpt2", "rope": "llama"}.get(cfg.position_encoding)


def _tensor_map(cfg):
    return _gpt2_tensors(cfg) if hf_family(cfg) == "gpt2" else _llama_tensors(cfg)


def _gpt2_tensors(cfg):
    parts = (("attn_norm", "ln_1", False), ("attn.qkv_proj", "attn.c_attn", True),
             ("attn.out_proj", "attn.c_proj", True), ("ffn_norm", "ln_2", False),
             ("ffn.up_proj", "mlp.c_fc", True), ("ffn.down_proj", "mlp.c_proj", True))
    tensors = [_Tensor("wte.weight", ("transformer.wte.weight",)),
               _Tensor("position.wpe.weight", ("transformer.wpe.weight",))]
    for i in range(cfg.n_layer):
        for ours, hf, conv1d in parts:
            tensors += [_Tensor(f"blocks.{i}.{ours}.weight", (f"transformer.h.{i}.{hf}.weight",), conv1d),
                        _Tensor(f"blocks.{i}.{ours}.bias", (f"transformer.h.{i}.{hf}.bias",))]
    tensors += [_Tensor("final_norm.weight", ("transformer.ln_f.weight",)),
                _Tensor("final_norm.bias", ("transformer.ln_f.bias",))]
    return tensors + _lm_head_tensors(cfg)


def _llama_tensors(cfg):
    tensors = [_Tensor("wte.weight", ("model.embed_tokens.weight",))]
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        tensors += [_Tensor(f"{ours}attn_norm.weight", (f"{hf}input_layernorm.weight",)),
                    _Tensor(f"{ours}ffn_norm.weight", (f"{hf}post_attention_layernorm.weight",))]
        for kind in ("weight", "bias") if cfg.bias else ("weight",):
            tensors += [_Tensor(f"{ours}attn.qkv_proj.{kind}", tuple(f"{hf}self_attn.{p}_proj.{kind}" for p in "qkv")),
                        _Tensor(f"{ours}attn.out_proj.{kind}", (f"{hf}self_attn.o_proj.{kind}",))]
            tensors += [_Tensor(f"{ours}ffn.{p}_proj.{kind}", (f"{hf}mlp.{p}_proj.{kind}",))
                        for p in ("gate", "up", "down")]
    tensors.append(_Tensor("final_norm.weight", ("model.norm.weight",)))
    return tensors + _lm_head_tensors(cfg)


def _lm_head_tensors(cfg):
    # a tied head is the embedding: Hugging Face leaves it out of the files, as safetensors must
    return [] if cfg.weight_tying else [_Tensor("lm_head.weight", ("lm_head.weight",))]


# ---------------------------------------------------------------- exporting

_GPT2_RULES = (
    ("norm_position", lambda c: c.norm_position == "pre", "GPT2LMHeadModel normalises before each sub-block"),
    ("normalization", lambda c: c.normalization == "layernorm", "GPT2LMHeadModel uses LayerNorm with a bias"),
    ("ffn_type", lambda c: c.ffn_type == "standard", "GPT-2's MLP is the standard one (not gated or split)"),
    ("bias", lambda c: c.bias, "GPT2LMHeadModel has a bias in every linear layer"),
    ("qk_norm", lambda c: not c.qk_norm, "GPT-2 has no QK-norm"),
    ("n_kv_head", lambda c: c.n_kv_head == c.n_head, "GPT-2 has no grouped-query attention (n_kv_head must equal n_head)"),
)
_LLAMA_RULES = (
    ("norm_position", lambda c: c.norm_position == "pre", "LlamaForCausalLM normalises before each sub-block"),
    ("normalization", lambda c: c.normalization == "rmsnorm", "Llama uses RMSNorm"),
    ("ffn_type", lambda c: c.ffn_type == "swiglu", "Llama's MLP is always gated (swiglu)"),
    ("qk_norm", lambda c: not c.qk_norm, "Llama has no QK-norm"),
)
_ACTIVATION_RULE = ("activation", lambda c: c.activation in HF_ACTIVATIONS, "it has no Hugging Face equivalent")
# the research components of model_components.py have no Hugging Face GPT-2 or Llama equivalent
_RESEARCH_RULES = (
    ("attention_type", lambda c: c.attention_type == "mha", "GPT-2 and Llama have only multi-head attention (mha)"),
    ("kv_pruning", lambda c: c.kv_pruning == "none", "Hugging Face generation keeps every key and value"),
)


def export_problems(cfg):
    """Why cfg cannot be written as a Hugging Face GPT-2 or Llama model; [] when it can."""
    family = hf_family(cfg)
    if family is None:
        return [f"position_encoding={cfg.position_encoding!r}: GPT-2 (learned_absolute) and Llama (rope) "
                f"both need position information"]
    rules = (_GPT2_RULES if family == "gpt2" else _LLAMA_RULES) + (_ACTIVATION_RULE,) + _RESEARCH_RULES
    return [f"{key}={getattr(cfg, key)!r}: {reason}" for key, fits, reason in rules if not fits(cfg)]


def check_exportable(cfg):
    problems = export_problems(cfg)
    if problems:
        family = {"gpt2": "GPT-2 (GPT2LMHeadModel)", "llama": "Llama (LlamaForCausalLM)"}.get(hf_family(cfg))
        chosen = (f"position_encoding={cfg.position_encoding!r} makes it a {family} model, which cannot express: "
                  if family else "")
        raise ConfigError(f"{cfg.arch_name} cannot be exported to Hugging Face: {chosen}{'; '.join(problems)}. "
                          f"Nothing was written.")


def to_hf(model, out_dir, tokenizer_meta=None):
    """Writes model as a Hugging Face folder: config.json, model.safetensors, and GPT-2 tokenizer
    files when tokenizer_meta (a checkpoint's "tokenizer" entry) says gpt2. Returns the folder."""
    cfg = model.config
    check_exportable(cfg)
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ConfigError("exporting writes model.safetensors, which needs the safetensors package: "
                          "pip install safetensors") from None
    tokenizer_meta = tokenizer_meta or {}
    if tokenizer_meta.get("vocab_size", 0) > cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer_meta['vocab_size']} tokens but the model's vocab_size is "
                          f"{cfg.vocab_size}; this model was not trained with that tokenizer.")
    gpt2_tokenizer = tokenizer_meta.get("tokenizer") == "gpt2"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu() for name, tensor in clean_state_dict(model.state_dict()).items()}
    save_file(_export_state(state, cfg), out_dir / "model.safetensors", metadata={"format": "pt"})
    config = _hf_config(cfg, eot_id=GPT2Tokenizer().eot_token if gpt2_tokenizer else None)
    config["torch_dtype"] = str(state["wte.weight"].dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if gpt2_tokenizer:
        write_gpt2_tokenizer(out_dir, cfg.block_size)
    return out_dir


def _export_state(state, cfg):
    qkv_rows = [cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim]
    hf_state = {}
    for t in _tensor_map(cfg):
        pieces = state[t.ours].split(qkv_rows) if len(t.hf) > 1 else (state[t.ours],)
        for name, piece in zip(t.hf, pieces):
            hf_state[name] = (piece.t() if t.transposed else piece).contiguous()
    return hf_state


def _hf_config(cfg, eot_id):
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.weight_tying,
              "bos_token_id": eot_id, "eos_token_id": eot_id}
    if hf_family(cfg) == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
                "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "n_positions": cfg.block_size,
                "n_inner": cfg.ffn_hidden_size, "activation_function": HF_ACTIVATIONS[cfg.activation],
                "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
                "attn_pdrop": cfg.dropout, "scale_attn_weights": True}
    # rope_theta for transformers 4.x, rope_parameters for 5.x
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head, "hidden_size": cfg.n_embd, "head_dim": cfg.head_dim,
            "intermediate_size": cfg.ffn_hidden_size, "hidden_act": HF_ACTIVATIONS[cfg.activation],
            "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout}


# ---------------------------------------------------------------- GPT-2 tokenizer files

def write_gpt2_tokenizer(out_dir, model_max_length):
    """vocab.json, merges.txt and tokenizer_config.json of GPT-2's byte-level BPE, as OpenAI
    published them, rebuilt from tiktoken's gpt2 ranks (rank = token id)."""
    encoding = GPT2Tokenizer().encoding
    ranks = encoding._mergeable_ranks  # tiktoken keeps no public accessor for the BPE ranks
    to_text = _bytes_to_unicode()

    def text(token):
        return "".join(to_text[byte] for byte in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab[EOT_TEXT] = encoding.eot_token
    merges = sorted((rank, _merge_parts(ranks, token)) for token, rank in ranks.items() if len(token) > 1)
    out_dir = Path(out_dir)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{text(left)} {text(right)}\n" for _, (left, right) in merges), encoding="utf-8")
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length, "add_prefix_space": False,
         "add_bos_token": False, **special}, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _merge_parts(ranks, token):
    """The two tokens whose merge made token: byte-level BPE of token stops one merge short of it,
    because every merge it applies has a lower rank than token itself."""
    parts = [bytes([byte]) for byte in token]
    while len(parts) > 2:
        i = min(range(len(parts) - 1), key=lambda j: ranks.get(parts[j] + parts[j + 1], float("inf")))
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return tuple(parts)


def _bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table (openai/gpt-2 encoder.py)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars)}
