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
                     (static) and its output projection named `down_proj` (scaled init); one with
                     `takes_attention_output = True` is called forward(x, attention_output)
- attention_type:    class(cfg) -> nn.Module, forward(x, position, positions, kv_cache=None) -> y,
                     with (static) forward_flops_per_token(cfg, seq_len) -> {"attention_proj",
                     "attention_scores", "position_encoding"} and kv_cache_elements_per_token(cfg)
                     -> (key elements, value elements) over all layers, and its output projection
                     named `out_proj` (scaled init); it caches whatever it needs in a KVCache
- attention_backend: function(q, k, v, causal, dropout_p, mask=None) -> out; q (B, H, T, d),
                     k (B, K, S, d) and v (B, K', S, dv) with K and K' dividing H (grouped-query
                     attention); mask, an additive float bias broadcast to (B, H, T, S) (0 where a
                     query may attend, -inf where not), replaces `causal` when given

A component with a reciprocal part (reciprocal attention, rmlp) has a non-persistent buffer
`reciprocal_on` (1.0 or 0.0) that GPT.set_training_step flips at ra_delay_steps.
"""
import difflib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import fused_mlp
import qkv_projection


class UnknownComponentError(ValueError):
    pass


def did_you_mean(value, accepted, n=1):
    """The end of an error message: ' Did you mean 'x'?' naming the closest accepted names (up to
    n), or '' when none is close."""
    close = difflib.get_close_matches(str(value), [str(a) for a in accepted], n=n)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


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
        return (f"Unknown {self.kind} {name!r}. Registered {self.kind} names: "
                f"{', '.join(self.names())}.{did_you_mean(name, self.names())}")


NORMALIZATIONS = Registry("normalization")
ACTIVATIONS = Registry("activation")
POSITION_ENCODINGS = Registry("position_encoding")
FFN_TYPES = Registry("ffn_type")
ATTENTION_TYPES = Registry("attention_type")
ATTENTION_BACKENDS = Registry("attention_backend")

REGISTRIES = {r.kind: r for r in
              (NORMALIZATIONS, ACTIVATIONS, POSITION_ENCODINGS, FFN_TYPES, ATTENTION_TYPES, ATTENTION_BACKENDS)}


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
        # bf16 x and an fp32 weight (autocast's q/k norms, a bf16 residual stream) run in fp32: F.rms_norm's
        # fused kernel needs the input and the weight in one dtype
        return F.rms_norm(x.to(torch.promote_types(x.dtype, self.weight.dtype)), (x.shape[-1],), self.weight,
                          self.eps).to(x.dtype)


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
        _register_rotary_tables(self, cfg.head_dim, cfg.rope_theta, cfg.block_size)

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


def _register_rotary_tables(module, dim, theta, block_size):
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    module.register_buffer("cos", angles.cos(), persistent=False)
    module.register_buffer("sin", angles.sin(), persistent=False)


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
        self.activation_name = cfg.activation
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if fused_mlp.applies(self, x):  # on CUDA: the GELU inside the matmuls' epilogues (fused_mlp.py)
            return self.dropout(fused_mlp.gelu_mlp(x, self.up_proj, self.down_proj))
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


@FFN_TYPES.register("rmlp")
class ReciprocalMLP(nn.Module):
    """The reciprocal MLP: the hidden size split into a standard part (ffn_hidden_size - rmlp_rank)
    and a reciprocal part (rmlp_rank), each activated, then folded before the down projection:

        h_std = act(x W_std),  h_rec = act((x + alpha * attention_output) W_rec)
        out   = [g_std * h_std | g_rec * h_rec] W_down

    rmlp_mixer: the reciprocal part also reads this block's attention output, scaled by a learned
    alpha (starting at 0, so the mixer starts as a no-op); rmlp_gates: learned scalar gates g_std,
    g_rec (starting at 1); without them the fold is the plain concatenation, and with neither
    option the layer computes exactly a standard MLP of ffn_hidden_size. The same FLOPs as the
    standard MLP: the two up projections together are one n_embd x ffn_hidden_size matrix.
    The reciprocal part is multiplied by `reciprocal_on` (see ra_delay_steps).
    """

    takes_attention_output = True

    def __init__(self, cfg):
        super().__init__()
        self.up_proj = nn.Linear(cfg.n_embd, cfg.ffn_hidden_size - cfg.rmlp_rank, bias=cfg.bias)
        self.rec_up_proj = nn.Linear(cfg.n_embd, cfg.rmlp_rank, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.ffn_hidden_size, cfg.n_embd, bias=cfg.bias)
        self.activation = ACTIVATIONS.get(cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout)
        self.mixer = nn.Parameter(torch.zeros(1)) if cfg.rmlp_mixer else None
        self.gate_std = nn.Parameter(torch.ones(1)) if cfg.rmlp_gates else None
        self.gate_rec = nn.Parameter(torch.ones(1)) if cfg.rmlp_gates else None
        self.register_buffer("reciprocal_on", torch.ones(()), persistent=False)

    def forward(self, x, attention_output):
        reciprocal_input = x + self.mixer * attention_output if self.mixer is not None else x
        h_std = self.activation(self.up_proj(x))
        h_rec = self.activation(self.rec_up_proj(reciprocal_input)) * self.reciprocal_on
        if self.gate_std is not None:
            h_std, h_rec = self.gate_std * h_std, self.gate_rec * h_rec
        return self.dropout(self.down_proj(torch.cat((h_std, h_rec), dim=-1)))

    @staticmethod
    def forward_flops_per_token(cfg):
        return 2 * 2 * cfg.n_embd * cfg.ffn_hidden_size * cfg.n_layer


# ---------------------------------------------------------------- attention backends

def _repeat_kv(q, k, v):
    """Expand k/v heads to the query heads (grouped-query attention) for kernels without GQA."""
    return _repeat_heads(k, q.shape[1]), _repeat_heads(v, q.shape[1])


def _repeat_heads(x, n_head):
    groups = n_head // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


@ATTENTION_BACKENDS.register("sdpa")
def sdpa_attention(q, k, v, causal, dropout_p, mask=None):
    k, v = _repeat_kv(q, k, v)
    value_dim = v.shape[-1]
    if value_dim != q.shape[-1]:
        # flash kernels need one head size for q, k and v (MLA's rope part makes q and k longer);
        # zero columns of v add zero columns to the output, which are cut off again
        v = F.pad(v, (0, q.shape[-1] - value_dim))
    if mask is not None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), dropout_p=dropout_p)
    else:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    return out[..., :value_dim]


@ATTENTION_BACKENDS.register("manual")
def manual_attention(q, k, v, causal, dropout_p, mask=None):
    """The readable reference: softmax(q k^T / sqrt(d) + causal mask) v."""
    weights = attention_weights(q, k, causal, mask)
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return weights @ _repeat_heads(v, q.shape[1])


def attention_weights(q, k, causal, mask=None):
    """softmax(q k^T / sqrt(d) + mask) (B, H, T, S), in q's dtype."""
    k = _repeat_heads(k, q.shape[1])
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores + mask
    elif causal:
        scores = scores.masked_fill(_future(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    # softmax in at least float32: bf16 exponentials lose too much
    return F.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(q.dtype)


def _future(query_len, key_len, device):
    """True where a query may not look: queries are the last query_len positions of the keys."""
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).triu(key_len - query_len + 1)


# ---------------------------------------------------------------- attention types

class KVCache:
    """What one layer keeps for incremental decoding: two tensors grown along dim 2 (keys and
    values, or MLA's latent and rope key), and the kv pruning statistics when pruning is on."""

    def __init__(self):
        self.k = self.v = None
        self.pruning = None

    def append(self, k, v):
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        return self.k, self.v


class _Attention(nn.Module):
    """What the attention types share: the backend, dropout and kv pruning."""

    def __init__(self, cfg):
        super().__init__()
        self.attend = ATTENTION_BACKENDS.get(cfg.attention_backend)
        self.dropout_p = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.kv_pruning = KVPruning(cfg) if cfg.kv_pruning != "none" else None

    def attention(self, q, k, v, kv_cache):
        """softmax(q k^T / sqrt(d)) v over the cached and the new keys; k and v as they are cached."""
        if self.kv_pruning is not None and kv_cache is not None:
            return self.kv_pruning.cached_attention(q, k, v, kv_cache)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)
        dropout_p = self.dropout_p if self.training else 0.0
        if self.kv_pruning is not None:
            return self.kv_pruning.training_attention(self.attend, q, k, v, dropout_p)
        # a single new query may see every cached key; otherwise the block is causal (prefill
        # starts from an empty cache, so queries and keys are the same positions)
        return self.attend(q, k, v, q.shape[2] > 1, dropout_p)

    def project_out(self, y):
        B, _, T, _ = y.shape
        return self.resid_dropout(self.out_proj(y.transpose(1, 2).reshape(B, T, -1)))


def _split_qkv(module, x):
    """q (B, H, T, hd), k and v (B, K, T, hd) from the fused projection, q and k normalised."""
    B, T, _ = x.shape
    heads, hd = (module.n_head, module.n_kv_head, module.n_kv_head), module.head_dim
    if qkv_projection.applies(module.qkv_proj, x):  # on CUDA: one pass gathers the gradients and the bias sum
        q, k, v = qkv_projection.project(x, module.qkv_proj, heads, hd)
    else:
        q, k, v = module.qkv_proj(x).view(B, T, sum(heads), hd).split(heads, dim=2)
    return module.q_norm(q).transpose(1, 2), module.k_norm(k).transpose(1, 2), v.transpose(1, 2)


def _init_qkv(module, cfg):
    module.n_head, module.n_kv_head, module.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    # one fused projection for q, k and v; k and v have n_kv_head heads each
    module.qkv_proj = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=cfg.bias)
    module.out_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
    norm = NORMALIZATIONS.get(cfg.normalization)
    module.q_norm = norm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
    module.k_norm = norm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()


def _qkv_flops_per_token(cfg, seq_len):
    return {"attention_proj": (2 * cfg.n_embd * (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim
                               + 2 * cfg.n_embd ** 2) * cfg.n_layer,
            "attention_scores": 4 * seq_len * cfg.n_embd * cfg.n_layer,
            "position_encoding": POSITION_ENCODINGS.get(cfg.position_encoding).forward_flops_per_token(cfg)}


@ATTENTION_TYPES.register("mha")
class CausalSelfAttention(_Attention):
    """Multi-head attention, with grouped-query attention when n_kv_head < n_head."""

    def __init__(self, cfg):
        super().__init__(cfg)
        _init_qkv(self, cfg)

    def forward(self, x, position, positions, kv_cache=None):
        q, k, v = _split_qkv(self, x)
        q, k = position.rotate(q, k, positions)
        return self.project_out(self.attention(q, k, v, kv_cache))

    @staticmethod
    def forward_flops_per_token(cfg, seq_len):
        return _qkv_flops_per_token(cfg, seq_len)

    @staticmethod
    def kv_cache_elements_per_token(cfg):
        return (cfg.n_kv_head * cfg.head_dim * cfg.n_layer,) * 2


@ATTENTION_TYPES.register("reciprocal")
class ReciprocalAttention(_Attention):
    """Reciprocal attention: each head of size d = head_dim splits into a standard part of
    d - r dims and a reciprocal part of r = ra_rank dims (e.g. 64 = 60 + 4). For query i and key j

        score(i, j) = ( w_std * <Q_std_i, K_std_j>  +  w_rec * <K_low_i, Q_low_j> ) / sqrt(d)

    the second term reads the pair in the transposed direction: how much token j's (low-rank)
    query wants token i's key. One fused SDPA call computes both, on

        queries  [sqrt(w_std) Q_std | sqrt(w_rec) K_low]      keys  [sqrt(w_std) K_std | sqrt(w_rec) Q_low]

    whose dot product is exactly the sum above; the causal mask then keeps j <= i, so the reciprocal
    term uses only earlier tokens' queries. (w_std, w_rec) = softmax of two learned logits per head,
    starting at ((d - r)/d, r/d). With ra_self_restart the output mixes in the token's own value,
    a random walk with restart: out_i = (1 - a) attn_i + a v_i, a = 0.5 sigmoid(learned) in [0, 0.5]
    per head. The KV cache holds the fused keys (one per query head: they contain Q_low) and the
    values. RoPE rotates q and k before the split; w_rec is multiplied by `reciprocal_on`.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        _init_qkv(self, cfg)
        self.rank = cfg.ra_rank
        standard = cfg.head_dim - cfg.ra_rank
        self.std_gate = nn.Parameter(torch.full((cfg.n_head,), math.log(standard)))
        self.rec_gate = nn.Parameter(torch.full((cfg.n_head,), math.log(cfg.ra_rank)))
        # a = 0.5 * sigmoid(logit(0.1)) = 0.05 at the start: mostly attention
        self.restart = nn.Parameter(torch.full((cfg.n_head,), math.log(0.1 / 0.9))) if cfg.ra_self_restart else None
        self.register_buffer("reciprocal_on", torch.ones(()), persistent=False)

    def gate_weights(self):
        """(w_std, w_rec), each (n_head,): the softmax of the two learned logits of every head."""
        w = F.softmax(torch.stack((self.std_gate, self.rec_gate)), dim=0)
        return w[0], w[1]

    def forward(self, x, position, positions, kv_cache=None):
        q, k, v = _split_qkv(self, x)
        q, k = position.rotate(q, k, positions)
        w_std, w_rec = (w.view(1, -1, 1, 1) for w in self.gate_weights())
        # scale after the square root: sqrt'(0) is infinite, so sqrt(w_rec * 0) would give NaN gradients
        s_std, s_rec = w_std.sqrt(), w_rec.sqrt() * self.reciprocal_on
        q_std, q_low = q.split([self.head_dim - self.rank, self.rank], dim=-1)
        k_std, k_low = _repeat_heads(k, self.n_head).split([self.head_dim - self.rank, self.rank], dim=-1)
        fused_q = torch.cat((s_std * q_std, s_rec * k_low), dim=-1)
        fused_k = torch.cat((s_std * k_std, s_rec * q_low), dim=-1)
        y = self.attention(fused_q, fused_k, v, kv_cache)
        if self.restart is not None:
            a = 0.5 * torch.sigmoid(self.restart).view(1, -1, 1, 1)
            y = (1 - a) * y + a * _repeat_heads(v, self.n_head)
        return self.project_out(y)

    @staticmethod
    def forward_flops_per_token(cfg, seq_len):
        return _qkv_flops_per_token(cfg, seq_len)

    @staticmethod
    def kv_cache_elements_per_token(cfg):
        return cfg.n_head * cfg.head_dim * cfg.n_layer, cfg.n_kv_head * cfg.head_dim * cfg.n_layer


@ATTENTION_TYPES.register("mla")
class MultiHeadLatentAttention(_Attention):
    """Multi-head latent attention (DeepSeek-V2): keys and values come from a latent c of
    kv_latent_dim per token, c = norm(x W_dkv), k_nope = c W_uk and v = c W_uv (n_kv_head heads),
    so the cache holds c instead of keys and values. RoPE cannot pass through the up projection,
    so position goes through a decoupled part: a small rope key of mla_rope_dim per token, shared
    by all heads, and a rope part of mla_rope_dim in every query head:

        score = ( <q_nope, k_nope> + <rope(q_rope), rope(k_rope)> ) / sqrt(head_dim + mla_rope_dim)

    Without position_encoding='rope' there is no rope part (mla_rope_dim = 0) and positions come
    from the input embedding, if any. The cache holds (c, k_rope): kv_latent_dim + mla_rope_dim
    per token and layer; decoding up-projects the cached latents at every step (the weight
    absorption of the paper is an inference optimisation left out). qk_norm normalises q_nope and
    k_nope.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.latent_dim, self.rope_dim = cfg.kv_latent_dim, cfg.mla_rope_dim
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * (cfg.head_dim + cfg.mla_rope_dim), bias=cfg.bias)
        self.kv_down_proj = nn.Linear(cfg.n_embd, cfg.kv_latent_dim + cfg.mla_rope_dim, bias=cfg.bias)
        norm = NORMALIZATIONS.get(cfg.normalization)
        self.kv_norm = norm(cfg.kv_latent_dim, cfg.norm_eps)
        self.kv_up_proj = nn.Linear(cfg.kv_latent_dim, 2 * cfg.n_kv_head * cfg.head_dim, bias=cfg.bias)
        self.out_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.q_norm = norm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = norm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        if self.rope_dim:
            _register_rotary_tables(self, self.rope_dim, cfg.rope_theta, cfg.block_size)

    def forward(self, x, position, positions, kv_cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim + self.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.head_dim, self.rope_dim], dim=-1)
        latent, k_rope = self.kv_down_proj(x).split([self.latent_dim, self.rope_dim], dim=-1)
        latent, k_rope = self.kv_norm(latent).unsqueeze(1), k_rope.unsqueeze(1)  # (B, 1, T, .): one shared "head"
        if self.rope_dim:
            cos, sin = self.cos[positions].to(q.dtype), self.sin[positions].to(q.dtype)
            q_rope, k_rope = _rotate(q_rope, cos, sin), _rotate(k_rope, cos, sin)
        if kv_cache is not None:
            latent, k_rope = kv_cache.append(latent, k_rope)
        S = latent.shape[2]
        k_nope, v = self.kv_up_proj(latent.squeeze(1)).view(B, S, 2 * self.n_kv_head, self.head_dim).transpose(
            1, 2).chunk(2, dim=1)
        q = torch.cat((self.q_norm(q_nope), q_rope), dim=-1)
        k = torch.cat((self.k_norm(k_nope), k_rope.expand(B, self.n_kv_head, S, self.rope_dim)), dim=-1)
        dropout_p = self.dropout_p if self.training else 0.0
        return self.project_out(self.attend(q, k, v, T > 1, dropout_p))

    @staticmethod
    def forward_flops_per_token(cfg, seq_len):
        H, hd, rd, L = cfg.n_head, cfg.head_dim, cfg.mla_rope_dim, cfg.kv_latent_dim
        proj = 2 * cfg.n_embd * (H * (hd + rd) + L + rd) + 2 * L * 2 * cfg.n_kv_head * hd + 2 * cfg.n_embd ** 2
        return {"attention_proj": proj * cfg.n_layer,
                "attention_scores": 2 * seq_len * H * (2 * hd + rd) * cfg.n_layer,
                "position_encoding": 3 * (H + 1) * rd * cfg.n_layer}

    @staticmethod
    def kv_cache_elements_per_token(cfg):
        return (cfg.kv_latent_dim + cfg.mla_rope_dim) * cfg.n_layer, 0


class KVPruning(nn.Module):
    """Keeps only the keys that received the most attention (kv_pruning = fixed | learned).

    A key's score is its attention mass normalised by its causal exposure: the attention weight it
    received, summed over the queries that could see it and averaged over the query heads sharing
    its kv head, divided by the number of those queries (early keys are seen by more queries and
    would win on raw mass). The kv_keep_recent most recent keys are always kept; the other places,
    up to ceil(keep_ratio * length) in all, go to the best-scoring older keys, per kv head.

    Training forward (no cache): the scores come from one extra no-grad q k^T over the sequence;
    every query then attends to the kept keys at or before it and to itself. The kept set is chosen
    from the whole sequence's attention, so which earlier keys a query sees depends on later
    queries: a non-differentiable look-ahead that generation, which chooses from the tokens seen so
    far, does not have. Generation: the
    cache accumulates mass and exposure as queries arrive and is cut back to
    ceil(keep_ratio * tokens seen) after each step; attention is computed explicitly there, since
    the weights are what scores the keys. kv_prune_values_only keeps every key and prunes values
    instead: a pruned token still takes softmax weight but contributes no value.

    fixed: keep_ratio = kv_keep_ratio. learned: keep_ratio = sigmoid(a learned logit per layer),
    starting at kv_keep_ratio; its gradient comes from a soft rank weight sigmoid(k - rank) on the
    kept older keys (k: the number of older places at that ratio). Nothing penalises a larger
    cache, so by the loss alone the ratio can only grow.
    """

    def __init__(self, cfg):
        super().__init__()
        self.values_only, self.recent, self.n_kv_head = cfg.kv_prune_values_only, cfg.kv_keep_recent, cfg.n_kv_head
        logit = math.log(cfg.kv_keep_ratio / (1 - cfg.kv_keep_ratio)) if cfg.kv_keep_ratio < 1 else 20.0
        self.keep_logit = nn.Parameter(torch.full((1,), logit)) if cfg.kv_pruning == "learned" else None
        self.fixed_ratio = cfg.kv_keep_ratio

    @staticmethod
    def forward_flops_per_token(cfg, seq_len):
        """The no-grad q k^T that scores the keys in the training forward (no backward)."""
        return 2 * seq_len * cfg.n_head * cfg.head_dim * cfg.n_layer

    def keep_ratio(self):
        return torch.sigmoid(self.keep_logit) if self.keep_logit is not None else self.fixed_ratio

    def keep_count(self, length):
        """How many of `length` keys are kept: the recent ones at least, all of them at most."""
        ratio = float(self.keep_ratio().detach()) if self.keep_logit is not None else self.fixed_ratio
        return min(length, max(min(self.recent, length), math.ceil(ratio * length)))

    def select(self, scores, keep):
        """Indices (sorted, so the order of positions stays) of the `keep` kept entries of scores
        (B, K, L): the last kv_keep_recent entries, then the best-scoring others."""
        recent = min(self.recent, scores.shape[-1])
        scores = scores.clone()
        scores[..., scores.shape[-1] - recent:] = float("inf")
        return scores.topk(keep, dim=-1).indices.sort(dim=-1).values

    def _mass(self, weights):
        """Attention weights (B, H, T, S) -> mass per kv head and key (B, K, S), in float32."""
        B, H, _, S = weights.shape
        return weights.float().sum(dim=2).view(B, self.n_kv_head, H // self.n_kv_head, S).mean(dim=2)

    def training_attention(self, attend, q, k, v, dropout_p):
        T = q.shape[2]
        with torch.no_grad():
            weights = attention_weights(q, k, causal=True)
            exposure = torch.arange(T, 0, -1, device=q.device)
            scores = self._mass(weights) / exposure
            kept = self.select(scores, self.keep_count(T))
        keep = torch.zeros_like(scores).scatter_(-1, kept, 1.0)
        if self.keep_logit is not None:
            keep = keep * self._soft_rank_weight(scores, T)
        if self.values_only:
            return attend(q, k, v * _repeat_heads(keep.unsqueeze(-1), v.shape[1]).to(v.dtype), True, dropout_p)
        allowed = (keep.unsqueeze(2) > 0) | torch.eye(T, dtype=torch.bool, device=q.device)
        bias = torch.where(allowed, keep.unsqueeze(2).clamp_min(1e-9).log(), float("-inf"))
        bias = bias.masked_fill(torch.eye(T, dtype=torch.bool, device=q.device), 0.0)
        bias = bias.masked_fill(_future(T, T, q.device), float("-inf"))
        return attend(q, k, v, False, dropout_p, mask=_repeat_heads(bias, q.shape[1]))

    def _soft_rank_weight(self, scores, length):
        """sigmoid(k - rank) for the older keys (1 for the recent ones), k differentiable in the ratio."""
        recent = min(self.recent, length)
        older = scores[..., :length - recent]
        rank = older.argsort(dim=-1, descending=True).argsort(dim=-1).float()
        places = self.keep_ratio() * length - recent
        weight = torch.sigmoid(places - rank)
        return torch.cat((weight, torch.ones_like(scores[..., length - recent:])), dim=-1)

    def cached_attention(self, q, k_new, v_new, cache):
        T = q.shape[2]
        k, v = cache.append(k_new, v_new)
        S = k.shape[2]
        state = cache.pruning or _PruningState(q.new_zeros(q.shape[0], self.n_kv_head, 0, dtype=torch.float32))
        state.extend(T, S, self.values_only)
        weights = attention_weights(q, k, causal=True)
        if self.values_only:
            index = _repeat_heads(state.v_index, q.shape[1]).unsqueeze(2).expand(-1, -1, T, -1)
            weights_of_kept = weights.gather(-1, index)
            out = weights_of_kept @ _repeat_heads(v, q.shape[1])
        else:
            out = weights @ _repeat_heads(v, q.shape[1])
        state.mass += self._mass(weights)
        state.exposure += (~_future(T, S, q.device)).sum(dim=0)
        cache.pruning = state
        self._prune(cache, state)
        return out

    def _prune(self, cache, state):
        keep = self.keep_count(state.seen)
        if self.values_only:
            if cache.v.shape[2] > keep:
                scores = (state.mass / state.exposure).gather(-1, state.v_index)
                kept = self.select(scores, keep)
                cache.v, state.v_index = _gather(cache.v, kept), state.v_index.gather(-1, kept)
            return
        if cache.k.shape[2] > keep:
            kept = self.select(state.mass / state.exposure, keep)
            cache.k, cache.v = _gather(cache.k, kept), _gather(cache.v, kept)
            state.mass, state.exposure = state.mass.gather(-1, kept), state.exposure.gather(-1, kept)


class _PruningState:
    """Per kv head and cached key: attention mass and exposure (float32), tokens seen, and with
    values_only the key position of every cached value."""

    def __init__(self, empty):
        self.mass, self.exposure, self.seen = empty, empty.clone(), 0
        self.v_index = empty.long()

    def extend(self, new_tokens, keys, values_only):
        zeros = self.mass.new_zeros(*self.mass.shape[:2], new_tokens)
        self.mass, self.exposure = torch.cat((self.mass, zeros), -1), torch.cat((self.exposure, zeros), -1)
        self.seen += new_tokens
        if values_only:
            positions = torch.arange(keys - new_tokens, keys, device=zeros.device).expand(*zeros.shape)
            self.v_index = torch.cat((self.v_index, positions), dim=-1)


def _gather(x, index):
    """x (B, heads, L, d) at index (B, K, keep) along L; index repeated when x has more heads."""
    index = _repeat_heads(index, x.shape[1])
    return x.gather(2, index.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))
