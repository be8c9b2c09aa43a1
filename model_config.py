"""The architecture, as one frozen, validated dataclass, and the named presets.

    cfg = ModelConfig.from_preset("llama", n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=100)

A preset fills in component choices; any option passed explicitly overrides it. `custom` is the
dataclass defaults alone, so every option is set by hand.
"""
import dataclasses
import difflib
import math
from dataclasses import dataclass

from model_components import REGISTRIES, UnknownComponentError

NORM_POSITIONS = ("pre", "post")


class ConfigError(ValueError):
    """A configuration mistake; its message is one paragraph meant for the user."""


@dataclass(frozen=True)
class ModelConfig:
    arch_preset: str = "custom"
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: n_head (plain multi-head); 1: multi-query
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64 for fast matmuls
    normalization: str = "layernorm"
    norm_eps: float = 1e-5
    activation: str = "gelu"
    attention_backend: str = "sdpa"
    position_encoding: str = "learned_absolute"
    rope_theta: float = 10000.0
    norm_position: str = "pre"
    ffn_type: str = "standard"
    ffn_hidden_size: int | None = None  # None: 4*n_embd, or 8/3*n_embd rounded up to 256 for swiglu
    bias: bool = True
    weight_tying: bool = True
    dropout: float = 0.0
    qk_norm: bool = False
    init_std: float = 0.02

    def __post_init__(self):
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.ffn_hidden_size is None:
            object.__setattr__(self, "ffn_hidden_size", default_ffn_hidden_size(self.ffn_type, self.n_embd))
        self._validate()

    def _validate(self):
        if self.arch_preset not in PRESETS:
            raise ConfigError(_choice_message("arch_preset", self.arch_preset, list(PRESETS)))
        for key in ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "vocab_size", "ffn_hidden_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{key}={value!r} is invalid: it must be a positive integer.")
        for key, positive in (("norm_eps", self.norm_eps), ("rope_theta", self.rope_theta), ("init_std", self.init_std)):
            if not positive > 0:
                raise ConfigError(f"{key}={positive!r} is invalid: it must be a positive number.")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                              f"(each head gets n_embd/n_head dimensions).")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head} "
                              f"(each key/value head is shared by n_head/n_kv_head query heads).")
        if self.position_encoding == "rope" and self.head_dim % 2:
            raise ConfigError(f"position_encoding='rope' needs an even head size, but n_embd/n_head = "
                              f"{self.n_embd}/{self.n_head} = {self.head_dim}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout!r} is invalid: it must satisfy 0 <= dropout < 1.")
        if self.norm_position not in NORM_POSITIONS:
            raise ConfigError(_choice_message("norm_position", self.norm_position, NORM_POSITIONS))
        for kind, registry in REGISTRIES.items():
            if getattr(self, kind) not in registry:
                raise UnknownComponentError(registry.unknown_message(getattr(self, kind)))

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @classmethod
    def from_preset(cls, preset, **overrides):
        if preset not in PRESETS:
            raise ConfigError(_choice_message("arch_preset", preset, list(PRESETS)))
        values = dict(PRESETS[preset])
        values.update(overrides)
        if callable(values.get("n_kv_head")):
            values["n_kv_head"] = values["n_kv_head"](values.get("n_head", cls.n_head))
        return cls(arch_preset=preset, **values)

    def to_dict(self):
        return dataclasses.asdict(self)

    @property
    def arch_name(self):
        """Compact name of every choice that differs between presets, in a fixed order:

        {n_layer}L-{n_head}H[-{n_kv_head}KV]-{n_embd}D-{position}-{norm}-{activation}-{ffn}-{Pre|Post}Norm
        [-QKNorm]-{Tied|Untied}[-Bias][-Drop{dropout}]

        position: AbsPos | RoPE | NoPos; norm: LN | LNnb | RMS; activation: GELU | GELUx | SiLU |
        ReLU | LReLU; ffn: MLP | GLU. Names of components without an abbreviation are used as is.
        Example (gpt2): 12L-12H-768D-AbsPos-LN-GELU-MLP-PreNorm-Tied-Bias
        """
        parts = [f"{self.n_layer}L", f"{self.n_head}H"]
        if self.n_kv_head != self.n_head:
            parts.append(f"{self.n_kv_head}KV")
        parts += [f"{self.n_embd}D",
                  _ABBREVIATIONS.get(self.position_encoding, self.position_encoding),
                  _ABBREVIATIONS.get(self.normalization, self.normalization),
                  _ABBREVIATIONS.get(self.activation, self.activation),
                  _ABBREVIATIONS.get(self.ffn_type, self.ffn_type),
                  f"{self.norm_position.capitalize()}Norm"]
        if self.qk_norm:
            parts.append("QKNorm")
        parts.append("Tied" if self.weight_tying else "Untied")
        if self.bias:
            parts.append("Bias")
        if self.dropout:
            parts.append(f"Drop{self.dropout:g}")
        return "-".join(parts)


_ABBREVIATIONS = {
    "learned_absolute": "AbsPos", "rope": "RoPE", "none": "NoPos",
    "layernorm": "LN", "layernorm_nobias": "LNnb", "rmsnorm": "RMS",
    "gelu": "GELU", "gelu_exact": "GELUx", "silu": "SiLU", "relu": "ReLU", "leaky_relu": "LReLU",
    "standard": "MLP", "swiglu": "GLU",
}


def default_ffn_hidden_size(ffn_type, n_embd):
    if ffn_type == "swiglu":
        # LLaMA: 2/3 of 4d keeps the three matrices at the parameter count of a 4d MLP
        return 256 * math.ceil(8 * n_embd / 3 / 256)
    return 4 * n_embd


_GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)

PRESETS = {
    # OpenAI GPT-2: pre-norm (LayerNorm before each sub-block, plus a final one), learned
    # positions, tanh GELU, 4x MLP, biases everywhere, tied input/output embeddings
    "gpt2": dict(_GPT2_SMALL, normalization="layernorm", position_encoding="learned_absolute",
                 activation="gelu", ffn_type="standard", norm_position="pre", bias=True,
                 weight_tying=True, qk_norm=False),
    "llama": dict(_GPT2_SMALL, normalization="rmsnorm", position_encoding="rope", activation="silu",
                  ffn_type="swiglu", norm_position="pre", bias=False, weight_tying=False, qk_norm=False),
    # the lab's model_v1: LLaMA plus grouped-query attention (4 query heads per kv head) and QK-norm
    "team": dict(_GPT2_SMALL, normalization="rmsnorm", position_encoding="rope", activation="silu",
                 ffn_type="swiglu", norm_position="pre", bias=False, weight_tying=False, qk_norm=True,
                 n_kv_head=lambda n_head: max(1, n_head // 4)),
    "hybrid": dict(_GPT2_SMALL, normalization="rmsnorm", position_encoding="rope", activation="gelu",
                   ffn_type="standard", norm_position="pre", bias=False, weight_tying=True, qk_norm=False),
    "custom": {},
}

# GPT-2 family sizes (OpenAI): reachable from any preset by overriding these three keys
GPT2_SIZES = {
    "124M": dict(n_layer=12, n_head=12, n_embd=768),
    "350M": dict(n_layer=24, n_head=16, n_embd=1024),
    "774M": dict(n_layer=36, n_head=20, n_embd=1280),
    "1.5B": dict(n_layer=48, n_head=25, n_embd=1600),
}

_TABLE_KEYS = ("normalization", "position_encoding", "activation", "ffn_type", "norm_position",
               "bias", "weight_tying", "qk_norm", "n_kv_head")


def preset_table():
    """The presets and their choices, as rows of text (first row: header)."""
    rows = [("preset",) + _TABLE_KEYS]
    for name in PRESETS:
        cfg = ModelConfig.from_preset(name)
        rows.append((name,) + tuple(str(getattr(cfg, k)) for k in _TABLE_KEYS))
    size_rows = [("size", "n_layer", "n_head", "n_embd")]
    size_rows += [(size,) + tuple(str(v) for v in dims.values()) for size, dims in GPT2_SIZES.items()]
    return rows, size_rows


def list_presets():
    for table in preset_table():
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        print()


def _choice_message(key, value, accepted):
    close = difflib.get_close_matches(str(value), [str(a) for a in accepted], n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"{key}={value!r} is not accepted. Accepted values: {', '.join(map(str, accepted))}.{hint}"
