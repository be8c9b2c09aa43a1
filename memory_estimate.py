"""What a training run needs before it starts: per-GPU memory, system RAM, checkpoint disk.

    config = plan_memory(config, device, dtype, dist, accumulation_steps)  # train.py: all of the below
    report = dry_run_report(config, world_size, free_bytes, accumulation_steps, dtype, device)
    refusal = preflight(config, world_size, free_bytes, accumulation_steps, dtype, device, margin)
    batch = find_max_batch_size(try_step, start=8)      # --auto_batch_size: real steps
    model = materialize(model_cfg, "cuda")               # weights born on the GPU, not in RAM

    python memory_estimate.py [--compile] [--sizes 124M,350M] [--batches 8,16]
        on a GPU: builds GPT-2 models, runs 3 real steps each and prints estimate vs
        torch.cuda.max_memory_allocated
    python memory_estimate.py --kv_cache [--presets gpt2,llama]
        anywhere: the generation KV cache per token of mha, mla, reciprocal and kv pruning

The estimate counts what eager PyTorch keeps alive at the step's peak, from the code of
model_builder.py, train_step.py, optimizers.py, pruning.py and distributed.py:
- the model keeps fp32 master weights; under autocast every nn.Linear weight and bias also gets a
  16-bit copy, cached until the micro-step's autocast context exits (after backward);
- activations saved for backward, per block: the residual stream twice (bf16 or fp32, as
  TrainConfig.residual_dtype makes it), the 16-bit copies of both norm outputs, q/k/v, the
  attention output and log-sum-exp, the FFN's hidden tensors (fused SDPA kernels store no seq x seq matrix; the math kernel and `manual` do);
- the loss: the plain loss keeps log_softmax's fp32 output and, in backward, its fp32 incoming and
  outgoing gradients (4 + 4 + 4 bytes per logit; the 16-bit logits are freed after forward, since
  train_step keeps only the loss); the chunked loss (default) holds one chunk's logits at a time;
- gradients exist during the forward only with gradient accumulation (set_to_none otherwise);
- DDP keeps gradient buckets (a second fp32 copy of the gradients); ZeRO-1 shards the optimizer
  state as ZeroRedundancyOptimizer does (whole parameters, greedily); FSDP2 shards parameters,
  gradients and optimizer state and gathers 16-bit blocks as it goes.
torch.compile fuses kernels and usually saves less than this (see BENCHMARKS.md).
"""
import dataclasses
import gc
from dataclasses import dataclass

import torch
import torch.nn as nn

from hardware import residual_stream_dtype
from model_builder import build_model
from model_components import ATTENTION_TYPES
from train_config import TrainConfig

GIB, MIB = 2**30, 2**20
# CUDA context, kernels of PyTorch/cuBLAS/cuDNN/NCCL and their workspaces: memory the GPU loses
# outside PyTorch's allocator (nvidia-smi minus torch.cuda.memory_reserved). Typically 0.5-1 GiB
# on an H100; `python memory_estimate.py` prints the measured figure. Stated, not derived.
CUDA_RUNTIME_OVERHEAD_BYTES = 1 * GIB
ADAM_MOMENT_BYTES = 8  # exp_avg and exp_avg_sq, fp32, per parameter
FUSED_ATTENTION = ("auto", "flash", "cudnn", "efficient")  # sdpa_kernel values that never store seq x seq


@dataclass(frozen=True)
class ParamCounts:
    """Parameter numbers of one architecture, read from a model built on the meta device."""
    total: int
    non_embedding: int
    linear: int  # nn.Linear weights and biases: what autocast copies to 16 bits
    prunable: int  # nn.Linear weights inside the blocks (pruning.prunable_weights)
    block: int  # one transformer block (the unit FSDP gathers)
    embedding_table: int  # wte: its dense gradient appears at the end of backward
    largest: int
    decay_sizes: tuple  # sizes of the parameters AdamW decays (2+ dims), then of the others
    other_sizes: tuple


def meta_model(model_cfg):
    """The GPT with every tensor on the meta device: shapes only, no memory, fast at any size."""
    with torch.device("meta"):
        return build_model(model_cfg)


def materialize(model_cfg, device):
    """build_model(model_cfg) with its tensors created directly on `device` and initialised there,
    so a large model never exists as a full fp32 copy in system RAM. Under the same seed the
    weights equal build_model(model_cfg).to(device) on the CPU; on a GPU they come from that
    device's generator (the same on every rank)."""
    with torch.device(device):
        return build_model(model_cfg)


def param_counts(model):
    params = list(model.parameters())  # tied weights once
    linear = [p for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)]
    prunable = [m.weight for m in model.blocks.modules() if isinstance(m, nn.Linear)]
    return ParamCounts(
        total=sum(p.numel() for p in params), non_embedding=model.num_params(non_embedding=True),
        linear=sum(p.numel() for p in {id(p): p for p in linear}.values()),
        prunable=sum(p.numel() for p in prunable),
        block=max(sum(p.numel() for p in block.parameters()) for block in model.blocks),
        embedding_table=model.wte.weight.numel(), largest=max(p.numel() for p in params),
        decay_sizes=tuple(p.numel() for p in params if p.dim() >= 2),
        other_sizes=tuple(p.numel() for p in params if p.dim() < 2))


def zero1_largest_share(counts, world_size):
    """Parameters of the most loaded rank under ZeroRedundancyOptimizer, which hands whole
    parameters, largest first within each group, to the rank holding the fewest so far."""
    loads = [0] * world_size
    for sizes in (counts.decay_sizes, counts.other_sizes):
        for size in sorted(sizes, reverse=True):
            loads[loads.index(min(loads))] += size
    return max(loads)


# ---------------------------------------------------------------- activations

def block_activation_bytes(cfg, tokens, act_bytes, residual_bytes, sdpa_kernel="auto", on_cuda=True):
    """Bytes one block saves for backward over `tokens` tokens.

    on_cuda: CUDA's fused RMSNorm saves its input and rstd; elsewhere F.rms_norm is composed of
    elementwise ops and also saves x * rstd. Dropout masks are bytes on CUDA, the dtype elsewhere,
    where attention with dropout also falls back to the math kernel."""
    d, h = cfg.n_embd, cfg.n_head
    rms_product = cfg.normalization == "rmsnorm" and not on_cuda
    stats = 2 if cfg.normalization.startswith("layernorm") else 1  # mean and rstd, or rstd, fp32
    saved = 2 * residual_bytes * d + 2 * act_bytes * d + 2 * 4 * stats  # norm inputs, outputs, stats
    if rms_product:
        saved += 2 * residual_bytes * d
    if cfg.attention_type == "mla":
        saved += _mla_bytes(cfg, act_bytes, stats, rms_product)
    else:
        saved += _qkv_attention_bytes(cfg, act_bytes, rms_product)
    saved += act_bytes * d + 4 * h  # attention output and log-sum-exp
    math_kernel = sdpa_kernel not in FUSED_ATTENTION or (cfg.dropout > 0 and not on_cuda)
    if cfg.attention_backend == "manual" or math_kernel:
        # softmax(q k^T) in fp32, its 16-bit copy for the matmul with v, dropout's mask and output
        per_score = 4 + (act_bytes if act_bytes < 4 else 0)
        if cfg.dropout > 0:
            per_score += (1 if on_cuda else act_bytes) + act_bytes
        saved += per_score * h * cfg.block_size
    saved += _ffn_bytes(cfg, act_bytes)
    if cfg.dropout > 0:
        saved += 2 * (1 if on_cuda else act_bytes) * d  # masks after attention and after the FFN
    return saved * tokens


def _qkv_attention_bytes(cfg, act_bytes, rms_product):
    """mha and reciprocal attention, kv pruning included, without the output and log-sum-exp."""
    hd, h, kv = cfg.head_dim, cfg.n_head, cfg.n_kv_head
    q_dim, kv_dim = h * hd, kv * hd
    rope, gqa = cfg.position_encoding == "rope", kv != h
    saved = 0
    # q, k and v are views of the fused projection, whose storage lives while any view is saved
    if cfg.qk_norm or not (rope and gqa) or cfg.attention_type == "reciprocal":
        saved += act_bytes * (q_dim + 2 * kv_dim)
    if cfg.qk_norm:
        saved += 4 * (h + kv) + (act_bytes * (q_dim + kv_dim) if rms_product else 0)
    if rope:
        saved += act_bytes * (q_dim + kv_dim)  # the rotated q and k
    if gqa:
        saved += 2 * act_bytes * q_dim  # k and v repeated to every query head
    if cfg.attention_type == "reciprocal":
        # the fused queries and keys, and the output copied for out_proj (its layout follows the fused q)
        saved += 2 * act_bytes * q_dim + act_bytes * cfg.n_embd
    return saved + _kv_pruning_bytes(cfg, act_bytes)


def _kv_pruning_bytes(cfg, act_bytes):
    h, S = cfg.n_head, cfg.block_size
    if cfg.kv_pruning == "none":
        return 0
    if cfg.kv_prune_values_only:
        return act_bytes * cfg.n_kv_head * cfg.head_dim + 4 * cfg.n_kv_head  # the masked values and the mask
    if cfg.kv_pruning == "fixed":
        return act_bytes * h * S  # the additive mask, in the attention dtype
    # a mask that requires grad sends SDPA to its math kernel: fp32 weights and the boolean mask per
    # score (its copies of q, k and v take the place of the projection's output), the soft rank weights
    return (4 + 1) * h * S + 4 * 4 * cfg.n_kv_head


def _mla_bytes(cfg, act_bytes, stats, rms_product):
    """MLA without the output and log-sum-exp (see MultiHeadLatentAttention)."""
    h, kv, hd, rd, latent = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mla_rope_dim, cfg.kv_latent_dim
    saved = act_bytes * (latent + rd) + 4 * stats + act_bytes * latent * (2 if rms_product else 1)  # latent's norm
    saved += 2 * act_bytes * h * (hd + rd)  # q and k, concatenated from their parts (k repeated to every head)
    manual = cfg.attention_backend == "manual"
    kv_up_saved = cfg.qk_norm or (not rd and kv == h and not manual)  # k_nope and v: views of kv_up_proj's output
    if manual:
        saved += act_bytes * h * hd  # v, copied by the weights @ v matmul
    elif rd:
        saved += act_bytes * h * (hd + rd)  # v padded to q's head size for the fused kernels
    elif kv != h:
        saved += act_bytes * h * hd  # v repeated to every query head
    if kv_up_saved:
        saved += act_bytes * 2 * kv * hd
    if cfg.qk_norm:
        saved += act_bytes * h * (hd + rd) + 4 * (h + kv) + (act_bytes * (h + kv) * hd if rms_product else 0)
    # SDPA's output is rd wider per head (v's padding), and copied for out_proj
    return saved + (0 if manual else act_bytes * h * rd + act_bytes * cfg.n_embd)


def _ffn_bytes(cfg, act_bytes):
    f, d = cfg.ffn_hidden_size, cfg.n_embd
    # relu backward reads its output, which the next matmul saves anyway; the others read their input
    input_saved = cfg.activation != "relu"
    if cfg.ffn_type == "swiglu":
        return act_bytes * f * (3 + input_saved)  # gate, activation(gate), up, their product
    saved = act_bytes * f * (1 + input_saved)  # up, activation(up) (for rmlp: concatenated)
    if cfg.ffn_type == "rmlp":
        saved += act_bytes * f * cfg.rmlp_gates  # the activations, saved by the gates' products
        saved += 2 * act_bytes * d * cfg.rmlp_mixer  # the attention output and the reciprocal part's input
    return saved


def final_activation_bytes(cfg, tokens, act_bytes, residual_bytes, on_cuda=True):
    """Saved outside the blocks (logits apart): input and target token ids (int64), the final
    norm's input, statistics and 16-bit output (the LM head's input), the embedding dropout mask."""
    d = cfg.n_embd
    saved = 2 * 8 + (residual_bytes + act_bytes) * d + 8
    if cfg.normalization == "rmsnorm" and not on_cuda:
        saved += residual_bytes * d
    if cfg.dropout > 0:
        saved += (1 if on_cuda else act_bytes) * d
    return saved * tokens


def logits_peak_bytes(cfg, tokens, act_bytes, loss_chunk_rows=0, fused_kernel=False):
    """The plain loss, at the start of backward: log_softmax's fp32 output and the fp32 gradients
    into and out of log_softmax (the 16-bit logits and their fp32 copy are freed after forward).
    The chunked loss, per logit of one chunk: the matmul output and the gradient, both in the
    activation dtype (the float8 head's e5m2 gradient and its transposed copy take as much); torch's
    path (fused_kernel False: no Triton, as on CPU) adds its fp32 copy and logsumexp's two fp32
    temporaries. Plus the stored gradients of the LM head's input (16-bit) and weight (fp32).
    Against max_memory_allocated on an H100 (2026-11-21, GPT-2 124M/350M, batch 8 and 16): chunked
    +1.2% to +3.9% (the first chunked loss, 4096 rows, torch's path), plain -0.9% to -0.2%; the whole
    estimate for GPT-2 124M at batch 32 with one 32768-row chunk on CUDA, 17.07 GiB against 14.8 (2026-11-22)."""
    if loss_chunk_rows:
        rows = min(loss_chunk_rows, tokens)
        per_logit = 2 * act_bytes if fused_kernel else act_bytes + 4 + 4 + 4 + act_bytes
        return per_logit * cfg.vocab_size * rows + act_bytes * cfg.n_embd * tokens + 4 * cfg.vocab_size * cfg.n_embd
    return (4 + 4 + 4) * cfg.vocab_size * tokens


def kv_cache_bytes_per_token(cfg, bytes_per_element=2):
    """(without kv pruning, with it): bytes the generation cache holds per token of context, all
    layers together, at long context. The attention type says what it caches (mha: keys and values
    of n_kv_head heads; reciprocal: fused keys of n_head heads and values; mla: the latent and the
    rope key). Pruning keeps kv_keep_ratio of the keys and values (of the values only with
    kv_prune_values_only) and adds its float32 attention mass and exposure per kv head and scored
    entry, plus an int64 key index per kept value with values only. learned: at the initial ratio."""
    keys, values = ATTENTION_TYPES.get(cfg.attention_type).kv_cache_elements_per_token(cfg)
    full = (keys + values) * bytes_per_element
    if cfg.kv_pruning == "none":
        return full, full
    ratio, per_head = cfg.kv_keep_ratio, cfg.n_kv_head * cfg.n_layer
    if cfg.kv_prune_values_only:
        return full, keys * bytes_per_element + 8 * per_head + ratio * (values * bytes_per_element + 8 * per_head)
    return full, ratio * (full + 8 * per_head)


def kv_cache_line(cfg, bytes_per_element=2):
    full, pruned = kv_cache_bytes_per_token(cfg, bytes_per_element)
    line = (f"generation KV cache ({cfg.attention_type}, {8 * bytes_per_element}-bit): {full / 1024:.1f} KiB per "
            f"token, {full * cfg.block_size / MIB:.1f} MiB per {cfg.block_size}-token sequence")
    if cfg.kv_pruning != "none":
        which = " (values only)" if cfg.kv_prune_values_only else ""
        line += (f"; kv_pruning={cfg.kv_pruning}{which} keeps {pruned / 1024:.1f} KiB per token "
                 f"(saves {1 - pruned / full:.0%})")
    return line


# ---------------------------------------------------------------- the estimate

@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU bytes. resident: alive for the whole step; forward_backward / optimizer_step: what
    each phase adds; peak: the larger phase (what torch.cuda.max_memory_allocated reports)."""
    resident: dict
    forward_backward: dict
    optimizer_step: dict
    runtime_overhead: int

    @property
    def forward_backward_total(self):
        return sum(self.resident.values()) + sum(self.forward_backward.values())

    @property
    def optimizer_step_total(self):
        return sum(self.resident.values()) + sum(self.optimizer_step.values())

    @property
    def peak(self):
        return max(self.forward_backward_total, self.optimizer_step_total)

    @property
    def device_total(self):
        return self.peak + self.runtime_overhead


def estimate_memory(model_cfg, batch_size, accumulation_steps=1, dtype="bfloat16", world_size=1, strategy="ddp",
                    activation_checkpointing="none", optimizer="adamw", pruning_method="none", sdpa_kernel="auto",
                    fsdp_reshard_after_forward=True, device="cuda", counts=None, loss_chunk_rows=0,
                    residual_dtype="auto"):
    """Per-GPU memory of one training step (see the module docstring for what is counted)."""
    counts = counts or param_counts(meta_model(model_cfg))
    P, on_cuda = counts.total, device.startswith("cuda")
    strategy = strategy if world_size > 1 else "single"
    fsdp = strategy == "fsdp"
    act = 4 if dtype == "float32" else 2
    residual = residual_stream_dtype(residual_dtype, dtype).itemsize
    shard = world_size if fsdp else 1
    tokens = batch_size * model_cfg.block_size

    resident = {"parameters (fp32)": 4 * P // shard}
    optimizer_params = zero1_largest_share(counts, world_size) if strategy == "zero1" else P // shard
    resident["optimizer state (2 fp32 moments)"] = ADAM_MOMENT_BYTES * optimizer_params
    if strategy in ("ddp", "zero1"):
        resident["DDP gradient buckets"] = 4 * P
    if pruning_method != "none":
        resident["pruning masks"] = counts.prunable
        if pruning_method == "movement":
            resident["movement scores and dormant weights"] = 8 * counts.prunable

    forward_backward = {}
    if accumulation_steps > 1:
        # FSDP2 without gradient sync keeps unsharded gradients, upcast to its fp32 reduce dtype
        forward_backward["gradients (accumulating)"] = 4 * P // (1 if fsdp else shard)
    if fsdp:
        gathered = P if not fsdp_reshard_after_forward else (P - model_cfg.n_layer * counts.block) + 2 * counts.block
        forward_backward["gathered 16-bit parameters (FSDP)"] = act * gathered
    elif act < 4:
        forward_backward["16-bit weight copies (autocast)"] = act * counts.linear
    forward_backward.update(_activations(model_cfg, tokens, act, residual, activation_checkpointing, sdpa_kernel,
                                         on_cuda, loss_chunk_rows))
    end_of_backward = 4 * P // shard + 4 * counts.embedding_table  # all gradients, plus wte's dense one
    optimizer_step = {"gradients": 4 * P // shard}
    optimizer_step.update(_optimizer_temporaries(counts, optimizer, pruning_method, on_cuda, shard))
    forward_backward = _larger_phase(forward_backward, end_of_backward)
    return MemoryEstimate(resident, forward_backward, optimizer_step,
                          CUDA_RUNTIME_OVERHEAD_BYTES if on_cuda else 0)


def _activations(cfg, tokens, act, residual, checkpointing, sdpa_kernel, on_cuda, loss_chunk_rows):
    per_block = block_activation_bytes(cfg, tokens, act, residual, sdpa_kernel, on_cuda)
    wrapped = {"none": 0, "full": cfg.n_layer, "selective": (cfg.n_layer + 1) // 2}[checkpointing]
    block_input = residual * cfg.n_embd * tokens
    items = {f"activations ({cfg.n_layer - wrapped} blocks stored)": (cfg.n_layer - wrapped) * per_block}
    if wrapped:
        # a checkpointed block keeps its input and recomputes the rest during its own backward
        items[f"checkpointed block inputs ({wrapped})"] = wrapped * block_input
    items["tokens, final norm, LM head input"] = final_activation_bytes(cfg, tokens, act, residual, on_cuda)
    items["logits and loss"] = logits_peak_bytes(cfg, tokens, act, loss_chunk_rows, fused_kernel=on_cuda)
    if wrapped:
        # the loss peak (logits) and a recomputed block never coexist; keep the larger
        items["logits and loss"] = max(items["logits and loss"], per_block + 2 * block_input)
    return items


def _larger_phase(forward_backward, end_of_backward):
    """The start of backward holds every activation; the end holds every gradient. Which is
    higher depends on the model and batch; the estimate takes the larger."""
    start = sum(forward_backward.values())
    copies = forward_backward.get("16-bit weight copies (autocast)", 0)
    gathered = forward_backward.get("gathered 16-bit parameters (FSDP)", 0)
    end = end_of_backward + copies + gathered
    if end <= start:
        return forward_backward
    return {key: value for key, value in (("16-bit weight copies (autocast)", copies),
                                          ("gathered 16-bit parameters (FSDP)", gathered),
                                          ("gradients at the end of backward", end_of_backward)) if value}


def _optimizer_temporaries(counts, optimizer, pruning_method, on_cuda, shard):
    items = {}
    if optimizer == "adamwspam":
        items["AdamWSPAM foreach temporaries"] = 4 * sum(counts.decay_sizes) // shard
    elif not on_cuda:
        items["AdamW per-parameter temporaries"] = 2 * 4 * counts.largest  # unfused AdamW off CUDA
    if pruning_method != "none":
        # a mask update scores every prunable weight and concatenates the scores for one threshold
        new_scores = 0 if pruning_method == "movement" else 4 * counts.prunable
        items["pruning mask update"] = new_scores + 4 * counts.prunable + counts.prunable
    return items


def estimate_for_config(config, world_size, accumulation_steps, dtype, device="cuda", batch_size=None,
                        activation_checkpointing=None, counts=None):
    """estimate_memory with every option read from a Config (batch and checkpointing overridable)."""
    from distributed import strategy_of
    from pruning import pruning_method_for
    t = config.train
    return estimate_memory(
        config.model, batch_size or t.batch_size, accumulation_steps, _assumed_dtype(dtype), world_size,
        strategy_of(t), activation_checkpointing or t.activation_checkpointing, t.optimizer, pruning_method_for(t),
        t.sdpa_kernel, t.fsdp_reshard_after_forward, device, counts, t.loss_chunk_rows, t.residual_dtype)


def _assumed_dtype(dtype):
    # a dry run on a machine without the GPU: 'auto' becomes bfloat16, what it picks on modern GPUs
    return "bfloat16" if dtype == "auto" else dtype


# ---------------------------------------------------------------- checkpoints, disk and RAM

def checkpoint_bytes(counts, pruning_method="none"):
    """training_state on disk: fp32 weights (tied ones once), both fp32 Adam moments and the
    pruning state; RNG states, config and counters add well under 1 MiB."""
    pruning = 0
    if pruning_method != "none":
        pruning = counts.prunable * (1 + (8 if pruning_method == "movement" else 0))
    return 4 * counts.total + ADAM_MOMENT_BYTES * counts.total + pruning


def retention_files(train_cfg, max_iters, epochs=None):
    """How many training-state files the checkpoint tiers keep at the end of a run."""
    t = train_cfg
    rolling = 0
    if t.rolling_checkpoint_interval > 0:
        rolling = min(max(t.keep_checkpoints, 1), max_iters // t.rolling_checkpoint_interval)
    epoch_files = (epochs or 0) if t.save_epoch_checkpoints else 0
    return {"latest + backup": 2, "rolling": rolling, "epoch": epoch_files}


def epochs_in_run(train_cfg, max_iters, tokens_per_step, train_tokens):
    if not train_tokens:
        return None
    epochs = max_iters * tokens_per_step // train_tokens
    return min(epochs, train_cfg.max_epochs) if train_cfg.max_epochs is not None else epochs


# ---------------------------------------------------------------- report, preflight, auto batch size

def dry_run_report(config, world_size, device_free_bytes, accumulation_steps, dtype, device="cuda",
                   train_tokens=None, margin=0.10):
    """The text --dry_run prints (and every run prints before it starts)."""
    from optimizers import effective_max_iters
    from pruning import pruning_method_for
    model = meta_model(config.model)
    counts, flops, t = param_counts(model), model.flops_per_token(), config.train
    estimate = estimate_for_config(config, world_size, accumulation_steps, dtype, device, counts=counts)
    tokens_per_step = t.batch_size * config.model.block_size * accumulation_steps * world_size
    breakdown = ", ".join(f"{k} {_giga(v)}" for k, v in flops.items() if k != "total")
    lines = [f"architecture {config.model.arch_name}",
             f"parameters {counts.total:,} ({counts.non_embedding:,} non-embedding)",
             f"training FLOPs/token {_giga(flops['total'])} ({breakdown})",
             f"memory per GPU: batch_size {t.batch_size} x block_size {config.model.block_size}, accumulation "
             f"{accumulation_steps}, {world_size} process(es) ({_strategy_name(t, world_size)}), "
             f"{_assumed_dtype(dtype)}, activation checkpointing {t.activation_checkpointing}, {t.optimizer}"]
    lines += _memory_table(estimate, device_free_bytes, margin)
    lines.append(kv_cache_line(config.model))
    ckpt = checkpoint_bytes(counts, pruning_method_for(t))
    max_iters = effective_max_iters(t)
    files = retention_files(t, max_iters, epochs_in_run(t, max_iters, tokens_per_step, train_tokens))
    best = 4 * counts.total
    kept = sum(files.values()) * ckpt + best
    epoch_note = "" if train_tokens or not t.save_epoch_checkpoints else \
        f" + {_gib(ckpt)} per epoch file (epoch count unknown without the dataset)"
    lines += [f"system RAM: model built on the device (no RAM copy); resuming loads a {_gib(ckpt)} checkpoint "
              f"into RAM per process ({_gib(ckpt * world_size)} for {world_size} on one node)",
              f"checkpoints: training state {_gib(ckpt)} each (weights {_gib(4 * counts.total)} + Adam moments "
              f"{_gib(ADAM_MOMENT_BYTES * counts.total)}), best_model.pt {_gib(best)}",
              f"disk for retention: {', '.join(f'{k} {n}' for k, n in files.items())} training states + "
              f"best_model.pt = {_gib(kept)}{epoch_note}; {_gib(ckpt)} more while a file is being written"]
    return "\n".join(lines)


def _memory_table(estimate, free_bytes, margin):
    peak_is_optimizer = estimate.optimizer_step_total > estimate.forward_backward_total
    rows = list(estimate.resident.items())
    rows += list((estimate.optimizer_step if peak_is_optimizer else estimate.forward_backward).items())
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"  {name:<{width}}{_gib(value):>11}" for name, value in rows]
    phase = "optimizer step" if peak_is_optimizer else "forward/backward"
    lines.append(f"  {'peak (' + phase + ')':<{width}}{_gib(estimate.peak):>11}")
    if estimate.runtime_overhead:
        lines.append(f"  {'+ CUDA context and workspaces':<{width}}{_gib(estimate.runtime_overhead):>11}")
    if free_bytes is None:
        lines.append(f"  {'device total':<{width}}{_gib(estimate.device_total):>11}  (free memory unknown)")
    else:
        verdict = "fits" if fits(estimate, free_bytes, margin) else "does NOT fit"
        lines.append(f"  {'device total':<{width}}{_gib(estimate.device_total):>11}  {verdict} in "
                     f"{_gib(free_bytes)} free with a {margin:.0%} margin")
    return lines


def fits(estimate, free_bytes, margin):
    return estimate.device_total * (1 + margin) <= free_bytes


def preflight(config, world_size, device_free_bytes, accumulation_steps, dtype, device="cuda", margin=0.10):
    """None when the run fits the free device memory with `margin` to spare; otherwise one
    paragraph refusing it, with a micro-batch and accumulation that keep the global batch."""
    if device_free_bytes is None:
        return None
    t = config.train
    counts = param_counts(meta_model(config.model))

    def estimate(batch, checkpointing=None):
        accumulation = t.batch_size * accumulation_steps // batch
        return estimate_for_config(config, world_size, accumulation, dtype, device, batch, checkpointing, counts)

    needed = estimate(t.batch_size)
    if fits(needed, device_free_bytes, margin):
        return None
    sequences = t.batch_size * accumulation_steps  # per rank per optimizer step: what must stay the same
    message = (f"the estimated peak of {_gib(needed.device_total)} per GPU does not fit in {_gib(device_free_bytes)} "
               f"of free device memory with a {margin:.0%} margin (memory_margin).")
    for checkpointing in dict.fromkeys((t.activation_checkpointing, "full")):
        batch = largest_fitting_divisor(sequences, lambda b: fits(estimate(b, checkpointing), device_free_bytes,
                                                                  margin))
        if batch:
            change = "" if checkpointing == t.activation_checkpointing else \
                f" --activation_checkpointing={checkpointing}"
            return (f"{message} Use --batch_size={batch} {_accumulation_option(t, sequences // batch)}{change} "
                    f"(estimated {_gib(estimate(batch, checkpointing).device_total)}; the global batch stays "
                    f"{sequences * world_size * config.model.block_size:,} tokens). --ignore_memory_check=True "
                    f"starts anyway; --dry_run=True shows the estimate.")
    return (f"{message} Even batch_size=1 with activation_checkpointing=full does not fit: parameters, "
            f"gradients and optimizer state alone need {_gib(sum(needed.resident.values()))}. Shard them with "
            f"--use_fsdp=True over more GPUs, or train a smaller model. --ignore_memory_check=True starts anyway.")


def _accumulation_option(t, accumulation):
    # with total_batch_size set, train.py derives the accumulation itself
    return "(accumulation follows total_batch_size)" if t.total_batch_size else \
        f"--gradient_accumulation_steps={accumulation}"


def largest_fitting_divisor(sequences, fits_batch):
    """The largest divisor of `sequences` for which fits_batch(divisor) holds, or None."""
    for batch in sorted((b for b in range(1, sequences + 1) if sequences % b == 0), reverse=True):
        if fits_batch(batch):
            return batch
    return None


def find_max_batch_size(try_step, start, limit=None):
    """The largest micro-batch for which try_step(batch) runs without running out of memory:
    doubling from `start` until a failure (or `limit`), then binary search; halving first when
    `start` itself fails. try_step runs one real training step at that micro-batch; it must
    clear any gradients a failed attempt left (optimizer.zero_grad(set_to_none=True)).
    Raises torch.OutOfMemoryError when even a micro-batch of 1 does not fit."""
    good, bad = 0, None
    batch = min(start, limit) if limit is not None else start
    while True:
        if limit is not None and batch > limit:
            bad = limit + 1
            break
        if _step_fits(try_step, batch):
            good = batch
            if bad is not None:
                break
            batch *= 2
        else:
            bad = batch
            if good or batch == 1:
                break
            batch //= 2
    if not good:
        raise torch.OutOfMemoryError("a micro-batch of 1 does not fit in device memory")
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if _step_fits(try_step, middle) else (good, middle)
    return good


def _step_fits(try_step, batch):
    try:
        try_step(batch)
        return True
    except torch.OutOfMemoryError:
        pass
    # outside the except block, so the traceback's frames (holding activations) are gone
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return False


def _strategy_name(t, world_size):
    from distributed import strategy_of
    return strategy_of(t) if world_size > 1 else "single"


def _gib(n):
    return f"{n / GIB:.2f} GiB"


def _giga(n):
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.2f}M"


# ---------------------------------------------------------------- train.py's memory step

def plan_memory(config, device, dtype, dist, accumulation_steps, train_tokens=None):
    """Prints the estimate (main rank). With dry_run, returns at once. With auto_batch_size, returns
    the config with the largest micro-batch that runs here (see with_auto_batch_size). Otherwise
    raises ConfigError on every rank when any rank's GPU lacks the memory, unless ignore_memory_check."""
    import hardware
    from distributed import max_across_ranks
    from model_config import ConfigError
    t = config.train
    free = hardware.free_device_memory_bytes(device)
    if dist.is_main:
        print(dry_run_report(config, dist.world_size, free, accumulation_steps, dtype, device, train_tokens,
                             t.memory_margin), flush=True)
    if t.dry_run:
        return config
    if t.auto_batch_size:
        return with_auto_batch_size(config, device, dtype, dist, accumulation_steps)
    refusal = None if t.ignore_memory_check else preflight(config, dist.world_size, free, accumulation_steps, dtype,
                                                           device, t.memory_margin)
    # every rank stops together: one rank going on alone would wait forever in its first collective
    if max_across_ranks(torch.tensor([float(refusal is not None)], device=device), dist).item():
        raise ConfigError(refusal or "another rank's GPU lacks the memory this run needs (see its message).")
    return config


def with_auto_batch_size(config, device, dtype, dist, accumulation_steps):
    """The config with the largest micro-batch that runs real training steps on this device (the
    smallest over ranks), a divisor of the per-rank sequences per optimizer step, so the global
    batch stays the same. The probe builds its own model and optimizer and throws them away."""
    from distributed import DistInfo, max_across_ranks, strategy_of
    from model_config import ConfigError
    from train_step import train_step
    from training_setup import CUDA_GRAPH_MODES, build_step_parts
    t = config.train
    if dist.enabled and strategy_of(t) == "fsdp":
        raise ConfigError("auto_batch_size=True probes one GPU without sharding, which says nothing about FSDP; "
                          "use the estimate of --dry_run=True and set batch_size by hand.")
    sequences = t.batch_size * accumulation_steps
    # CUDA graphs cannot run the probe's two micro-steps; their peak was measured within 0.1 GiB of default's
    graphs = t.compile_mode == "auto" or t.compile_mode in CUDA_GRAPH_MODES
    probe_train = dataclasses.replace(t, compile_mode="default") if graphs else t
    # no collectives: each rank probes its own GPU
    parts = build_step_parts(dataclasses.replace(config, train=probe_train), device, dtype, DistInfo())
    # the probe has no DDP: hold the memory DDP's gradient buckets will take
    buckets = estimate_for_config(config, dist.world_size, accumulation_steps, dtype, device).resident.get(
        "DDP gradient buckets", 0)
    held = torch.empty(buckets, dtype=torch.uint8, device=device)

    def try_step(batch):
        parts.optimizer.zero_grad(set_to_none=True)
        tokens = torch.randint(0, config.model.vocab_size, (batch, config.model.block_size + 1), device=device)
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        # two micro-steps when training will accumulate: the second runs with gradients allocated
        train_step(parts.step_model, parts.optimizer, lambda: (x, y), min(2, sequences // batch), parts.autocast,
                   t.grad_clip, parts.scaler, parts.pruner, loss_settings=parts.loss_settings)

    try:
        largest = find_max_batch_size(try_step, t.batch_size, limit=sequences)
    except torch.OutOfMemoryError:
        raise ConfigError("auto_batch_size=True: even a micro-batch of 1 runs out of device memory; see the "
                          "estimate above (activation_checkpointing, use_fsdp or a smaller model).") from None
    parts = held = None  # the probe's model, optimizer and held memory go before training builds its own
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    largest = -int(max_across_ranks(torch.tensor([-float(largest)], device=device), dist).item())
    batch = largest_fitting_divisor(sequences, lambda b: b <= largest)
    accumulation = t.gradient_accumulation_steps if t.total_batch_size else sequences // batch
    if dist.is_main:
        print(f"auto_batch_size: micro-batch {largest} runs; batch_size={batch} with accumulation "
              f"{sequences // batch} keeps {sequences} sequences per rank per step", flush=True)
    return dataclasses.replace(config, train=dataclasses.replace(t, batch_size=batch,
                                                                 gradient_accumulation_steps=accumulation))


# ---------------------------------------------------------------- estimate vs measurement on a GPU

def measure_on_gpu(preset, size, batch_size, compile_model, activation_checkpointing, loss_chunk_rows, steps=3):
    """(estimated peak, torch.cuda.max_memory_allocated, memory_reserved, GPU memory used outside
    PyTorch's allocator) over `steps` real train_steps of GPT-2 `size` in bfloat16 autocast."""
    from distributed import DistInfo
    from model_config import GPT2_SIZES, ModelConfig
    from train_config import Config, TrainConfig
    from train_step import train_step
    from training_setup import build_step_parts
    config = Config(ModelConfig.from_preset(preset, **GPT2_SIZES[size]),
                    TrainConfig(batch_size=batch_size, dtype="bfloat16", device="cuda", compile=compile_model,
                                activation_checkpointing=activation_checkpointing, loss_chunk_rows=loss_chunk_rows))
    estimate = estimate_for_config(config, 1, 1, "bfloat16", "cuda")
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    parts = build_step_parts(config, "cuda", "bfloat16", DistInfo())
    T = config.model.block_size
    tokens = torch.randint(0, config.model.vocab_size, (batch_size, T + 1), device="cuda")
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    for _ in range(steps):
        train_step(parts.step_model, parts.optimizer, lambda: (x, y), 1, parts.autocast, 1.0, parts.scaler,
                   loss_settings=parts.loss_settings)
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    return estimate.peak, torch.cuda.max_memory_allocated(), reserved, total - free - reserved


KV_CACHE_VARIANTS = (dict(), dict(attention_type="mla"), dict(attention_type="reciprocal"),
                     dict(kv_pruning="fixed"), dict(kv_pruning="fixed", kv_prune_values_only=True))


def print_kv_cache_table(presets, sizes):
    from model_config import GPT2_SIZES, ModelConfig
    for preset in presets:
        for size in sizes:
            for variant in KV_CACHE_VARIANTS:
                cfg = ModelConfig.from_preset(preset, **GPT2_SIZES[size], **variant)
                print(f"{preset:<7}{size:<6}{kv_cache_line(cfg)}")


def main(argv):
    import argparse
    import hardware
    parser = argparse.ArgumentParser(description="estimated vs measured peak GPU memory of real training steps")
    parser.add_argument("--presets", default="gpt2")
    parser.add_argument("--sizes", default="124M,350M")
    parser.add_argument("--batches", default="8,16")
    parser.add_argument("--activation_checkpointing", default="none")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--loss_chunk_rows", type=int, default=TrainConfig.loss_chunk_rows,
                        help="0: the plain loss on whole-batch logits")
    parser.add_argument("--kv_cache", action="store_true",
                        help="print the generation KV cache per token of each attention type and kv pruning (no GPU)")
    args = parser.parse_args(argv)
    if args.kv_cache:
        print_kv_cache_table(args.presets.split(","), args.sizes.split(","))
        return
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA (or ROCm) GPU: it compares the estimate with torch.cuda.max_memory_allocated")
    hardware.enable_tf32()
    print(f"{hardware.device_name('cuda')}, torch {torch.__version__}, bfloat16 autocast, compile={args.compile}, "
          f"AdamW fused, 3 steps, accumulation 1, one GPU, loss_chunk_rows={args.loss_chunk_rows}")
    print(f"{'preset':<7}{'size':<6}{'batch':>6} {'ckpt':<10}{'estimate':>10}{'measured':>10}{'error':>8}"
          f"{'reserved':>10}{'outside':>9}  (GiB; error = estimate / measured - 1)")
    for preset in args.presets.split(","):
        for size in args.sizes.split(","):
            for checkpointing in args.activation_checkpointing.split(","):
                for batch in map(int, args.batches.split(",")):
                    try:
                        estimate, measured, reserved, outside = measure_on_gpu(preset, size, batch, args.compile,
                                                                               checkpointing, args.loss_chunk_rows)
                    except torch.OutOfMemoryError:
                        print(f"{preset:<7}{size:<6}{batch:>6} {checkpointing:<10} out of memory")
                        continue
                    print(f"{preset:<7}{size:<6}{batch:>6} {checkpointing:<10}{estimate / GIB:>10.2f}"
                          f"{measured / GIB:>10.2f}{estimate / measured - 1:>+8.1%}{reserved / GIB:>10.2f}"
                          f"{outside / GIB:>9.2f}", flush=True)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
