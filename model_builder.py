"""Assembles the GPT from the registry: build_model(cfg) -> GPT.

The model is a plain nn.Module: it knows nothing of DDP, FSDP, FP8, checkpoints or logging;
train.py wraps it from the outside.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from linear_cross_entropy import LossSettings, linear_cross_entropy
from model_components import ATTENTION_TYPES, FFN_TYPES, NORMALIZATIONS, POSITION_ENCODINGS, KVCache, KVPruning
from model_config import ModelConfig


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        norm = NORMALIZATIONS.get(cfg.normalization)
        self.attn_norm = norm(cfg.n_embd, cfg.norm_eps)
        self.attn = ATTENTION_TYPES.get(cfg.attention_type)(cfg)
        self.ffn_norm = norm(cfg.n_embd, cfg.norm_eps)
        self.ffn = FFN_TYPES.get(cfg.ffn_type)(cfg)
        self.pre_norm = cfg.norm_position == "pre"

    def forward(self, x, position, positions, kv_cache=None):
        if self.pre_norm:
            attention_output = self.attn(self.attn_norm(x), position, positions, kv_cache)
            x = x + attention_output
            return x + self._ffn(self.ffn_norm(x), attention_output)
        attention_output = self.attn(x, position, positions, kv_cache)
        x = self.attn_norm(x + attention_output)
        return self.ffn_norm(x + self._ffn(x, attention_output))

    def _ffn(self, x, attention_output):
        if getattr(self.ffn, "takes_attention_output", False):
            return self.ffn(x, attention_output)
        return self.ffn(x)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.position = POSITION_ENCODINGS.get(cfg.position_encoding)(cfg)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        # post-norm blocks already end in a norm; pre-norm needs one before the head (GPT-2's ln_f)
        self.final_norm = (NORMALIZATIONS.get(cfg.normalization)(cfg.n_embd, cfg.norm_eps)
                           if cfg.norm_position == "pre" else nn.Identity())
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.weight_tying:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        self._reciprocal_on = True  # the buffers' initial state
        self.residual_dtype = None  # None: the embeddings' dtype; the trainer sets it (hardware.residual_stream_dtype)

    def set_training_step(self, step):
        """Switches the reciprocal parts (reciprocal attention, rmlp) on once step >= ra_delay_steps;
        train.py calls it before every step. The switch is a buffer that a compiled model reads as an
        input, and it is written only when it changes, so it never causes a recompile."""
        on = step >= self.config.ra_delay_steps
        if on != self._reciprocal_on:
            self._reciprocal_on = on
            for module in self.modules():
                if isinstance(getattr(module, "reciprocal_on", None), torch.Tensor):
                    module.reciprocal_on.fill_(float(on))

    def _init_weights(self, module):
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        for name in ("out_proj", "down_proj"):
            # GPT-2: residual projections scaled so the residual stream's variance does not grow with depth
            projection = getattr(module, name, None)
            if isinstance(projection, nn.Linear):
                nn.init.normal_(projection.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))

    def forward(self, idx, targets=None, kv_caches=None, start_pos=0, loss_settings=LossSettings(), last_only=False):
        """(logits, loss). With targets and loss_settings.chunk_rows > 0 the loss is computed chunk by
        chunk without the whole batch's logits (see linear_cross_entropy.py), and logits is None. last_only
        (without targets): the logits of the last position alone, (B, 1, vocab), as generation needs."""
        T = idx.shape[1]
        if start_pos + T > self.config.block_size:
            raise ValueError(f"sequence of {start_pos + T} tokens exceeds block_size={self.config.block_size}")
        positions = torch.arange(start_pos, start_pos + T, device=idx.device)
        x = self.wte(idx)
        position_embedding = self.position.input_embedding(positions)
        if position_embedding is not None:
            x = x + position_embedding
        x = self.embed_dropout(x)
        if self.residual_dtype is not None:
            x = x.to(self.residual_dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, self.position, positions, kv_caches[i] if kv_caches is not None else None)
        x = self.final_norm(x)
        if last_only:  # generation needs the next token's logits only, not the prompt's
            x = x[:, -1:]
        if targets is not None and loss_settings.chunk_rows:
            return None, linear_cross_entropy(x, self.lm_head.weight, targets, chunk_rows=loss_settings.chunk_rows,
                                              fp8=loss_settings.fp8)
        logits = self.lm_head(x)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Parameter count; non_embedding leaves out the token and position tables (as nanoGPT),
        but keeps an untied LM head, which does real matmul work."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.wte.weight.numel()
            total -= sum(p.numel() for p in self.position.parameters())
        return total

    def flops_per_token(self, seq_len=None):
        return flops_per_token(self.config, seq_len or self.config.block_size)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, vocab_size=None):
        """Sample max_new_tokens after idx (B, T), reusing keys and values across steps. vocab_size:
        sample only ids below it (the tokenizer's real tokens, not the padding of a padded vocab)."""
        block_size = self.config.block_size
        kv_caches, start_pos, next_input = None, 0, idx[:, -block_size:]
        for _ in range(max_new_tokens):
            if kv_caches is None or start_pos + next_input.shape[1] > block_size:
                # (re)fill the cache from the last block_size tokens when the window slides
                next_input = idx[:, -block_size:]
                kv_caches, start_pos = [KVCache() for _ in self.blocks], 0
            logits, _ = self(next_input, kv_caches=kv_caches, start_pos=start_pos, last_only=True)
            start_pos += next_input.shape[1]
            next_token = sample_next_token(logits[:, -1, :vocab_size], temperature, top_k)
            idx = torch.cat((idx, next_token), dim=1)
            next_input = next_token
        return idx


def sample_next_token(logits, temperature, top_k):
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


def build_model(cfg: ModelConfig) -> GPT:
    return GPT(cfg)


def from_hf(name_or_path, **overrides):
    """(GPT, ModelConfig) from "gpt2"/"gpt2-medium"/"gpt2-large"/"gpt2-xl" or a local Hugging Face
    folder of a GPT-2, Llama or Mistral model; see hf_interop.py."""
    from hf_interop import from_hf as load  # hf_interop imports this module
    return load(name_or_path, **overrides)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict:
    """Model FLOPs per token of one training step (forward + backward), with a breakdown.

    Conventions (those of Kaplan et al. 2020 and PaLM's MFU, and of torch's FlopCounterMode):
    - a multiply-add is 2 FLOPs; backward costs twice the forward (gradients for inputs and for
      weights), so every matmul term is 3x its forward cost;
    - attention_proj, attention_scores and position_encoding come from the attention type
      (model_components.py): for mha, the q, k, v and output projections with grouped-query
      attention's smaller k/v projections, 2 * n_embd * (n_head + 2 n_kv_head) * head_dim +
      2 * n_embd^2 per layer; the scores q k^T and the weighted sum of v over the full
      seq_len x seq_len square, 4 * seq_len * n_embd per layer forward, NOT halved for the causal
      mask (as PaLM counts it, and as the manual kernel computes it; FlashAttention skips about half
      of this work); RoPE's elementwise rotation of q and k (small). reciprocal attention has
      exactly mha's FLOPs (the fused call keeps the head size); mla counts its latent down and up
      projections and the rope-widened q k^T, but not the zero columns the sdpa backend pads v with;
    - ffn: from the FFN component (2 or 3 matrices); lm_head: 2 * n_embd * vocab_size whether
      tied or not (tying shares the weights, not the work);
    - kv_pruning_scores: kv pruning's extra no-grad q k^T in the training forward, counted once
      (it has no backward);
    - norms, softmax, activations, gates, embeddings lookups and the loss are elementwise and left out.
    """
    attention = ATTENTION_TYPES.get(cfg.attention_type).forward_flops_per_token(cfg, seq_len)
    forward = {
        "attention_proj": attention["attention_proj"],
        "attention_scores": attention["attention_scores"],
        "ffn": FFN_TYPES.get(cfg.ffn_type).forward_flops_per_token(cfg),
        "position_encoding": attention["position_encoding"],
        "lm_head": 2 * cfg.n_embd * cfg.vocab_size,
    }
    breakdown = {name: 3 * flops for name, flops in forward.items()}
    if cfg.kv_pruning != "none":
        breakdown["kv_pruning_scores"] = KVPruning.forward_flops_per_token(cfg, seq_len)
    breakdown["total"] = sum(breakdown.values())
    return breakdown
