"""The objects a training step needs, built from a Config: the model (converted and wrapped from
the outside for FP8, activation checkpointing, compilation and data parallelism), the optimizer,
the pruner, the loss scaler and the autocast context. Shared by train.py and bench.py, so both
run exactly the same step.

Order (as torchtitan applies them): float8 -> activation checkpointing -> compile -> DDP/FSDP.
"""
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

import cublaslt
import dependent_launch
import distributed
import hardware
from linear_cross_entropy import LossSettings, fp8_unsupported
from memory_estimate import materialize
from model_config import ConfigError
from optimizers import build_optimizer
from pruning import build_pruner


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the torch.compile modes that record CUDA graphs


@dataclass
class StepParts:
    model: nn.Module  # the plain model: checkpoints, evaluation of weights, generation
    step_model: nn.Module  # what the step runs: compiled and/or wrapped
    optimizer: torch.optim.Optimizer
    pruner: object  # pruning.Pruner or None
    scaler: object  # torch.amp.GradScaler for float16, else None
    autocast: object
    loss_settings: LossSettings  # what the step and the evaluation pass to the model's loss
    strategy: str
    compile_mode: str | None  # the torch.compile mode the step runs, None when not compiled
    dependent_launch: bool  # Inductor's kernels launch while the kernel before them finishes (dependent_launch.py)
    accumulation_steps: int  # micro-steps per optimizer step


def build_step_parts(config, device, dtype, dist):
    t = config.train
    torch.manual_seed(t.seed)  # the same initial weights on every rank (FSDP does not broadcast them)
    model = materialize(config.model, device)  # built on the device: no full copy in system RAM
    model.residual_dtype = hardware.residual_stream_dtype(t.residual_dtype, dtype)
    if t.fp8:
        convert_to_float8(model, t.fp8_recipe, device)
    apply_activation_checkpointing(model, t.activation_checkpointing)
    select_attention_kernel(t.sdpa_kernel, device)
    cublaslt.reserve_workspace(device)  # outside any CUDA graph's memory pool
    strategy = distributed.strategy_of(t)
    compile_model = t.compile if t.compile is not None else device.startswith("cuda")
    accumulation_steps = accumulation_for(t, config.model.block_size, dist.world_size)
    compile_mode = compile_mode_for(t, device, dist.world_size, accumulation_steps)
    launch_early = dependent_launch.enable(t.dependent_launch, device, compile_model, dist.world_size)
    set_norm_gradient_split(t.batch_size * config.model.block_size, device, compile_model)
    step_model = distributed.wrap_model(model, dist, strategy, compile_model, hardware.torch_dtype(dtype),
                                        t.fsdp_reshard_after_forward, compile_mode)
    torch.manual_seed(t.seed + dist.rank)  # dropout masks differ between ranks
    optimizer = distributed.shard_optimizer(build_optimizer(model, t, device), dist, strategy)
    scaler = torch.amp.GradScaler(device.split(":")[0]) if hardware.needs_grad_scaler(dtype, device) else None
    return StepParts(model=model, step_model=step_model, optimizer=optimizer, pruner=build_pruner(model, t),
                     scaler=scaler, autocast=hardware.autocast_context(device, dtype),
                     loss_settings=loss_settings_for(t, config.model, device, dtype), strategy=strategy,
                     compile_mode=compile_mode if compile_model else None, dependent_launch=launch_early,
                     accumulation_steps=accumulation_steps)


def compile_mode_for(t, device, world_size, accumulation_steps):
    """The torch.compile mode the step runs. auto (the default) takes CUDA graphs (reduce-overhead)
    where they can work: one process on an NVIDIA GPU, one micro-step per optimizer step, no torchao
    float8, no activation checkpointing. There GPT-2 124M on an H100 runs from as fast as without
    them to 1% faster, depending on the machine, and all four presets run (BENCHMARKS.md).
    Elsewhere auto is default: graphs cannot accumulate gradients (the memory holding one
    micro-step's gradients is overwritten by the next), and were never measured with DDP/FSDP,
    float8 blocks, checkpointed blocks or ROCm's HIP graphs."""
    if t.compile_mode != "auto":
        return t.compile_mode
    graphs = (device.startswith("cuda") and not hardware.is_rocm() and world_size == 1 and accumulation_steps == 1
              and not t.fp8 and t.activation_checkpointing == "none")
    return "reduce-overhead" if graphs else "default"


def set_norm_gradient_split(rows, device, compiled):
    """Rows per program in the kernel torch.compile makes for a norm's backward, which also sums the
    norm's weight (and bias) gradient over the rows (Inductor's "mix-order reduction"): each program
    leaves one partial sum per column, and a torch sum after the kernel adds them. Inductor aims at
    8 programs per SM: 16 rows each for GPT-2 at batch 32 on an H100, 2048 partial sums, and each of
    the step's 50 final sums took 10.7 us plus a 4 us launch gap. One program per SM (128 rows) ran
    the step 0.36% faster on average over two alternating pairs on one H100, 0.10% on another
    (BENCHMARKS.md). Inductor's own choice off CUDA, uncompiled, or where the
    torch lacks the setting."""
    from torch._inductor import config as inductor_config
    if not hasattr(inductor_config.triton, "mix_order_reduction_split_size"):
        return
    split = None
    if compiled and device.startswith("cuda"):
        per_sm = rows // torch.cuda.get_device_properties(torch.device(device)).multi_processor_count
        split = min(128, max(16, 1 << max(per_sm.bit_length() - 1, 0)))  # a power of two, as Inductor's are
    inductor_config.triton.mix_order_reduction_split_size = split


def convert_to_float8(model, recipe, device):
    """torchao float8 training for the blocks' linear layers. The LM head is left to fp8_lm_head
    (the fused loss scales its gradient without an amax pass over the logits), and layers whose
    sizes are not multiples of 16 stay as they are (the float8 matmul kernels need them). Falls
    back with one warning."""
    reason = _float8_unavailable(device) or _torchao_missing()
    if reason:
        warnings.warn(f"fp8=True ignored: {reason}; training in bf16/the configured dtype instead.", stacklevel=2)
        return
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    def eligible(module, name):
        return (isinstance(module, nn.Linear) and name.startswith("blocks.")
                and module.in_features % 16 == 0 and module.out_features % 16 == 0)

    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(recipe), module_filter_fn=eligible)


def _float8_unavailable(device):
    if not device.startswith("cuda"):
        return f"float8 matmuls need an NVIDIA GPU of compute capability 8.9+, and the device is {device}"
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < (8, 9):
        return f"{hardware.device_name(device)} has compute capability {capability[0]}.{capability[1]} (< 8.9)"
    return None


def _torchao_missing():
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return "torchao is not installed (pip install torchao)"
    return None


def loss_settings_for(t, model_cfg, device, dtype):
    """The loss the model computes. fp8_lm_head=None (the default) takes the float8 LM head wherever
    it runs, silently: the fused loss, a bf16 step, a GPU of compute capability 8.9+, sizes that are
    multiples of 16. fp8_lm_head=True falls back to the configured dtype there, with one warning."""
    reason = _float8_unavailable(device) or fp8_unsupported(
        model_cfg.n_embd, model_cfg.vocab_size, t.batch_size * model_cfg.block_size, t.loss_chunk_rows)
    if t.fp8_lm_head is None:
        return LossSettings(chunk_rows=t.loss_chunk_rows,
                            fp8=bool(t.loss_chunk_rows) and dtype == "bfloat16" and reason is None)
    if t.fp8_lm_head and reason:
        warnings.warn(f"fp8_lm_head=True ignored: {reason}; the LM head runs in bf16/the configured dtype "
                      f"instead.", stacklevel=2)
    return LossSettings(chunk_rows=t.loss_chunk_rows, fp8=t.fp8_lm_head and reason is None)


def apply_activation_checkpointing(model, mode):
    """Recompute blocks' activations in backward instead of storing them: `full` wraps every
    block, `selective` every second one (about half the activation memory for a third more
    forward compute on the wrapped blocks)."""
    if mode == "none":
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    every = 1 if mode == "full" else 2
    for i, block in enumerate(model.blocks):
        if i % every == 0:
            model.blocks[i] = checkpoint_wrapper(block)


_SDPA_FLAGS = {"flash": "enable_flash_sdp", "cudnn": "enable_cudnn_sdp", "efficient": "enable_mem_efficient_sdp",
               "math": "enable_math_sdp"}


def select_attention_kernel(kernel, device):
    """Restricts scaled_dot_product_attention to one fused kernel (math stays as the fallback
    for shapes a kernel cannot take); auto leaves PyTorch's own choice."""
    if kernel == "auto" or not device.startswith("cuda"):
        return
    for name, flag in _SDPA_FLAGS.items():
        getattr(torch.backends.cuda, flag)(name in (kernel, "math"))


def accumulation_for(t, block_size, world_size):
    """Micro-steps per optimizer step; with total_batch_size the global batch in tokens stays what
    the config says whatever the number of ranks."""
    steps = t.gradient_accumulation_steps
    if t.total_batch_size is not None:
        micro_tokens = t.batch_size * block_size * world_size
        if t.total_batch_size % micro_tokens:
            raise ConfigError(f"total_batch_size={t.total_batch_size} tokens is not a multiple of one micro-batch "
                              f"on all ranks (batch_size * block_size * world_size = {micro_tokens} tokens); use e.g. "
                              f"{micro_tokens * max(1, round(t.total_batch_size / micro_tokens))}.")
        steps = t.total_batch_size // micro_tokens
    if steps > 1 and t.compile is not False and t.compile_mode in CUDA_GRAPH_MODES:
        # measured on an H100: the second micro-step's backward fails ("accessing tensor output of
        # CUDAGraphs that has been overwritten"), as the gradients of the first live in graph memory
        raise ConfigError(f"compile_mode={t.compile_mode!r} (CUDA graphs) cannot accumulate gradients over {steps} "
                          f"micro-steps: the graphs' memory holding one micro-step's gradients is overwritten by the "
                          f"next. Use compile_mode='default' (or 'auto', which takes graphs only where they work), "
                          f"or a batch_size that needs no accumulation.")
    return steps
