"""The component registry: every swappable piece of the GPT, selected by name.

Adding a component is one decorated class (or function) in this file and nothing else:

    @NORMALIZATIONS.register("my_norm")
    class MyNorm(nn.Module):
        def __init__(self, dim, eps): ...

The config validates names against these registries and model_builder.py looks them up, so a
new name is usable from config files and the command line as soon as it is registered.

Interfaces per kind:
- normalization:     class(dim, eps) -> nn.Module
- activation:        function(tensor) -> tensor
- position_encoding: class(cfg) -> nn.Module with input_embedding(positions) (tensor or None),
                     rotate(q, k, positions) -> (q, k) and forward_flops_per_token(cfg) (static)
- ffn_type:          class(cfg) -> nn.Module, forward(x) -> x, with forward_flops_per_token(cfg)
                     (static) and its output projection named `down_proj` (scaled init)
- attention_backend: function(q, k, v, causal, dropout_p) -> out; q (B, H, T, hd),
                     k and v (B, K, S, hd) with K dividing H (grouped-query attention)
"""
import difflib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class UnknownComponentError(ValueError):
    pass


class Registry:
    """Name -> component for one kind (the kind is also the config key that selects it)."""

    def __init__(self, kind):
        self.kind = kind
        self._components = {}

    def register(self, name):
        def add(component):
            if name in self._components:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._components[name] = component
            return component
        return add

    def names(self):
        return list(self._components)

    def __contains__(self, name):
        return name in self._components

    def get(self, name):
        if name not in self._components:
            raise UnknownComponentError(self.unknown_message(name))
        return self._components[name]

    def unknown_message(self, name):
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return (f"Unknown {self.kind} {name!r}. Registered {self.kind} names: "
                f"{', '.join(self.names())}.{hint}")


NORMALIZATIONS = Registry("normalization")
ACTIVATIONS = Registry("activation")
POSITION_ENCODINGS = Registry("position_encoding")
FFN_TYPES = Registry("ffn_type")
ATTENTION_BACKENDS = Registry("attention_backend")

REGISTRIES = {r.kind: r for r in
              (NORMALIZATIONS, ACTIVATIONS, POSITION_ENCODINGS, FFN_TYPES, ATTENTION_BACKENDS)}


# ---------------------------------------------------------------- normalization

@NORMALIZATIONS.register("layernorm")
class LayerNorm(nn.LayerNorm):
    def __init__(self, dim, eps):
        super().__init__(dim, eps=eps, bias=True)


@NORMALIZATIONS.register("layernorm_nobias")
class LayerNormNoBias(nn.LayerNorm):
    def __init__(self, dim, eps):
        super().__init__(dim, eps=eps, bias=False)


@NORMALIZATIONS.register("rmsnorm")
class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # F.rms_norm dispatches to a fused kernel and upcasts internally under autocast
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


# ---------------------------------------------------------------- activation

@ACTIVATIONS.register("gelu")
def gelu_tanh(x):
    # GPT-2 was trained with the tanh approximation; keeping it makes the preset exact
    return F.gelu(x, approximate="tanh")


@ACTIVATIONS.register("gelu_exact")
def gelu_exact(x):
    return F.gelu(x)


@ACTIVATIONS.register("silu")
def silu(x):
    return F.silu(x)


@ACTIVATIONS.register("relu")
def relu(x):
    return F.relu(x)


@ACTIVATIONS.register("leaky_relu")
def leaky_relu(x):
    return F.leaky_relu(x, negative_slope=0.01)


# ---------------------------------------------------------------- position encoding

@POSITION_ENCODINGS.register("learned_absolute")
class LearnedAbsolutePosition(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)

    def input_embedding(self, positions):
        return self.wpe(positions)

    def rotate(self, q, k, positions):
        return q, k

    @staticmethod
    def forward_flops_per_token(cfg):
        return 0  # a table lookup and an add: no multiply-adds worth counting


@POSITION_ENCODINGS.register("rope")
class RotaryPosition(nn.Module):
    """RoPE (Su et al. 2021), rotate-half layout as in LLaMA / Hugging Face.

    cos/sin tables are non-persistent buffers: they are derived from rope_theta, so checkpoints
    stay free of them and load across block sizes.
    """

    def __init__(self, cfg):
        super().__init__()
        head_dim = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def input_embedding(self, positions):
        return None

    def rotate(self, q, k, positions):
        cos = self.cos[positions].to(q.dtype)
        sin = self.sin[positions].to(q.dtype)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    @staticmethod
    def forward_flops_per_token(cfg):
        # x*cos + rotate_half(x)*sin: 3 FLOPs per element of q and k, in every layer
        return 3 * (cfg.n_head + cfg.n_kv_head) * cfg.head_dim * cfg.n_layer


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated_half = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated_half * sin


@POSITION_ENCODINGS.register("none")
class NoPosition(nn.Module):
    """No explicit positions (NoPE): the causal mask alone carries order."""

    def __init__(self, cfg):
        super().__init__()

    def input_embedding(self, positions):
        return None

    def rotate(self, q, k, positions):
        return q, k

    @staticmethod
    def forward_flops_per_token(cfg):
        return 0


# ---------------------------------------------------------------- feed-forward

@FFN_TYPES.register("standard")
class StandardFFN(nn.Module):
    """up -> activation -> down (GPT-2's MLP)."""

    def __init__(self, cfg):
        super().__init__()
        self.up_proj = nn.Linear(cfg.n_embd, cfg.ffn_hidden_size, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.ffn_hidden_size, cfg.n_embd, bias=cfg.bias)
        self.activation = ACTIVATIONS.get(cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(self.activation(self.up_proj(x))))

    @staticmethod
    def forward_flops_per_token(cfg):
        return 2 * 2 * cfg.n_embd * cfg.ffn_hidden_size * cfg.n_layer


@FFN_TYPES.register("swiglu")
class GatedFFN(nn.Module):
    """activation(gate(x)) * up(x) -> down (Shazeer 2020). With activation=silu this is
    SwiGLU as in LLaMA; with gelu it is GeGLU."""

    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.ffn_hidden_size, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.ffn_hidden_size, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.ffn_hidden_size, cfg.n_embd, bias=cfg.bias)
        self.activation = ACTIVATIONS.get(cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(self.activation(self.gate_proj(x)) * self.up_proj(x)))

    @staticmethod
    def forward_flops_per_token(cfg):
        return 3 * 2 * cfg.n_embd * cfg.ffn_hidden_size * cfg.n_layer


# ---------------------------------------------------------------- attention backends

def _repeat_kv(q, k, v):
    """Expand k/v heads to the query heads (grouped-query attention) for kernels without GQA."""
    groups = q.shape[1] // k.shape[1]
    if groups == 1:
        return k, v
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


@ATTENTION_BACKENDS.register("sdpa")
def sdpa_attention(q, k, v, causal, dropout_p):
    k, v = _repeat_kv(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)


@ATTENTION_BACKENDS.register("manual")
def manual_attention(q, k, v, causal, dropout_p):
    """The readable reference: softmax(q k^T / sqrt(d) + causal mask) v."""
    k, v = _repeat_kv(q, k, v)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        query_len, key_len = q.shape[-2], k.shape[-2]
        # queries are the last query_len positions of the key sequence
        future = torch.ones(query_len, key_len, dtype=torch.bool, device=q.device).triu(key_len - query_len + 1)
        scores = scores.masked_fill(future, float("-inf"))
    # softmax in at least float32: bf16 exponentials lose too much
    weights = F.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(q.dtype)
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return weights @ v
