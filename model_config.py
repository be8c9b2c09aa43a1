"""The architecture, as one frozen, validated dataclass, and the named presets.

    cfg = ModelConfig.from_preset("llama", n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=100)

A preset fills in component choices; any option passed explicitly overrides it. `custom` is the
dataclass defaults alone, so every option is set by hand.
"""
import dataclasses
import math
from dataclasses import dataclass

from model_components import REGISTRIES, UnknownComponentError, did_you_mean

NORM_POSITIONS = ("pre", "post")
KV_PRUNING = ("none", "fixed", "learned")


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
    # research components (model_components.py); the defaults leave every preset as it was
    attention_type: str = "mha"
    kv_latent_dim: int | None = None  # mla: None -> 4 * head_dim
    mla_rope_dim: int | None = None  # mla: None -> head_dim // 2 with position_encoding='rope', else 0
    ra_rank: int | None = None  # reciprocal: None -> head_dim // 16 (at least 1)
    ra_self_restart: bool = False  # reciprocal: out = (1 - a) attn + a v, a learned in [0, 0.5]
    rmlp_rank: int | None = None  # rmlp: reciprocal hidden units; None -> ffn_hidden_size // 4
    rmlp_mixer: bool = False  # rmlp: the reciprocal part also reads the attention output
    rmlp_gates: bool = False  # rmlp: learned gates on the standard and reciprocal parts
    ra_delay_steps: int = 0  # reciprocal parts switch on at this training step
    kv_pruning: str = "none"  # none | fixed | learned
    kv_keep_ratio: float = 0.382
    kv_keep_recent: int = 64
    kv_prune_values_only: bool = False  # keep every key, prune values

    def __post_init__(self):
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.ffn_hidden_size is None:
            object.__setattr__(self, "ffn_hidden_size", default_ffn_hidden_size(self.ffn_type, self.n_embd))
        self._validate()
        self._resolve_component_defaults()
        self._validate_research_components()

    def _resolve_component_defaults(self):
        defaults = {"mla": {"kv_latent_dim": 4 * self.head_dim,
                            "mla_rope_dim": self.head_dim // 2 if self.position_encoding == "rope" else 0},
                    "reciprocal": {"ra_rank": max(1, self.head_dim // 16)}}.get(self.attention_type, {})
        if self.ffn_type == "rmlp":
            defaults["rmlp_rank"] = self.ffn_hidden_size // 4
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)

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

    def _validate_research_components(self):
        owners = {"kv_latent_dim": "mla", "mla_rope_dim": "mla", "ra_rank": "reciprocal",
                  "ra_self_restart": "reciprocal", "rmlp_rank": "rmlp", "rmlp_mixer": "rmlp", "rmlp_gates": "rmlp"}
        for key, owner in owners.items():
            value = getattr(self, key)
            used = owner in (self.attention_type, self.ffn_type)
            if not used and value not in (None, False):
                kind = "ffn_type" if owner == "rmlp" else "attention_type"
                raise ConfigError(f"{key}={value!r} is only used by {kind}='{owner}', but {kind} is "
                                  f"{getattr(self, kind)!r}. Set {kind}='{owner}' or leave {key} unset.")
        for key in ("kv_latent_dim", "ra_rank", "rmlp_rank", "kv_keep_recent"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"{key}={value!r} is invalid: it must be a positive integer.")
        for key in ("mla_rope_dim", "ra_delay_steps"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"{key}={value!r} is invalid: it must be a non-negative integer.")
        if self.attention_type == "mla":
            self._validate_mla()
        if self.attention_type == "reciprocal" and not self.ra_rank < self.head_dim:
            raise ConfigError(f"ra_rank={self.ra_rank} is invalid: the reciprocal part must be smaller than the "
                              f"head, ra_rank < head_dim = n_embd/n_head = {self.head_dim} (e.g. 4 of 64).")
        if self.ffn_type == "rmlp" and not self.rmlp_rank < self.ffn_hidden_size:
            raise ConfigError(f"rmlp_rank={self.rmlp_rank} is invalid: the reciprocal part must be smaller than the "
                              f"hidden layer, rmlp_rank < ffn_hidden_size = {self.ffn_hidden_size}.")
        if self.ra_delay_steps and self.attention_type != "reciprocal" and self.ffn_type != "rmlp":
            raise ConfigError(f"ra_delay_steps={self.ra_delay_steps} delays a reciprocal part, but there is none: "
                              f"it needs attention_type='reciprocal' or ffn_type='rmlp'.")
        self._validate_kv_pruning()

    def _validate_mla(self):
        if self.position_encoding == "rope" and (self.mla_rope_dim <= 0 or self.mla_rope_dim % 2):
            raise ConfigError(f"mla_rope_dim={self.mla_rope_dim} is invalid: attention_type='mla' with "
                              f"position_encoding='rope' rotates a decoupled rope part, which needs a positive even "
                              f"size (default head_dim // 2 = {self.head_dim // 2}).")
        if self.position_encoding != "rope" and self.mla_rope_dim:
            raise ConfigError(f"mla_rope_dim={self.mla_rope_dim} is only used with position_encoding='rope' (MLA's "
                              f"decoupled RoPE); with position_encoding={self.position_encoding!r} leave it unset.")

    def _validate_kv_pruning(self):
        if self.kv_pruning not in KV_PRUNING:
            values_only = (" To keep every key and prune values, set kv_prune_values_only=True beside "
                           "kv_pruning='fixed' or 'learned'.") if "v" in str(self.kv_pruning).lower() else ""
            raise ConfigError(_choice_message("kv_pruning", self.kv_pruning, KV_PRUNING) + values_only)
        if not (isinstance(self.kv_keep_ratio, (int, float)) and 0 < self.kv_keep_ratio <= 1):
            raise ConfigError(f"kv_keep_ratio={self.kv_keep_ratio!r} is invalid: it must satisfy "
                              f"0 < kv_keep_ratio <= 1 (the fraction of keys kept, e.g. 0.382).")
        if self.kv_prune_values_only and self.kv_pruning == "none":
            raise ConfigError("kv_prune_values_only=True prunes values by the kv pruning rule, but kv_pruning is "
                              f"'none'. Accepted with kv_pruning: {', '.join(KV_PRUNING[1:])}.")
        if self.kv_pruning != "none" and self.attention_type == "mla":
            raise ConfigError(f"kv_pruning={self.kv_pruning!r} is not implemented for attention_type='mla', whose "
                              f"cache is already a compressed latent. Accepted with kv_pruning: mha, reciprocal.")

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
        ReLU | LReLU; ffn: MLP | GLU | RMLP{rmlp_rank}[Mix][Gate]. Names of components without an
        abbreviation are used as is. Only when they differ from the defaults: after {n_embd}D the
        attention type, MLA{kv_latent_dim}[r{mla_rope_dim}] or RA{ra_rank}[SR] (self-restart); at the
        end Delay{ra_delay_steps} and KVP{Fixed|Learned}{kv_keep_ratio}r{kv_keep_recent}[V] (values only).
        Example (gpt2): 12L-12H-768D-AbsPos-LN-GELU-MLP-PreNorm-Tied-Bias
        """
        parts = [f"{self.n_layer}L", f"{self.n_head}H"]
        if self.n_kv_head != self.n_head:
            parts.append(f"{self.n_kv_head}KV")
        parts.append(f"{self.n_embd}D")
        if self.attention_type == "mla":
            parts.append(f"MLA{self.kv_latent_dim}" + (f"r{self.mla_rope_dim}" if self.mla_rope_dim else ""))
        elif self.attention_type == "reciprocal":
            parts.append(f"RA{self.ra_rank}" + ("SR" if self.ra_self_restart else ""))
        elif self.attention_type != "mha":
            parts.append(_ABBREVIATIONS.get(self.attention_type, self.attention_type))
        parts += [_ABBREVIATIONS.get(self.position_encoding, self.position_encoding),
                  _ABBREVIATIONS.get(self.normalization, self.normalization),
                  _ABBREVIATIONS.get(self.activation, self.activation),
                  _ABBREVIATIONS.get(self.ffn_type, self.ffn_type) + self._rmlp_suffix(),
                  f"{self.norm_position.capitalize()}Norm"]
        if self.qk_norm:
            parts.append("QKNorm")
        parts.append("Tied" if self.weight_tying else "Untied")
        if self.bias:
            parts.append("Bias")
        if self.dropout:
            parts.append(f"Drop{self.dropout:g}")
        if self.ra_delay_steps:
            parts.append(f"Delay{self.ra_delay_steps}")
        if self.kv_pruning != "none":
            parts.append(f"KVP{self.kv_pruning.capitalize()}{self.kv_keep_ratio:g}r{self.kv_keep_recent}"
                         + ("V" if self.kv_prune_values_only else ""))
        return "-".join(parts)

    def _rmlp_suffix(self):
        if self.ffn_type != "rmlp":
            return ""
        return f"{self.rmlp_rank}" + ("Mix" if self.rmlp_mixer else "") + ("Gate" if self.rmlp_gates else "")


_ABBREVIATIONS = {
    "learned_absolute": "AbsPos", "rope": "RoPE", "none": "NoPos",
    "layernorm": "LN", "layernorm_nobias": "LNnb", "rmsnorm": "RMS",
    "gelu": "GELU", "gelu_exact": "GELUx", "silu": "SiLU", "relu": "ReLU", "leaky_relu": "LReLU",
    "standard": "MLP", "swiglu": "GLU", "rmlp": "RMLP",
    "mha": "MHA", "mla": "MLA", "reciprocal": "RA",
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
    return (f"{key}={value!r} is not accepted. Accepted values: {', '.join(map(str, accepted))}."
            f"{did_you_mean(value, accepted)}")
