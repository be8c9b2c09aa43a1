"""Data parallelism through PyTorch's own engine: DDP, ZeRO-1 and FSDP2, launched by torchrun.

The model stays a plain nn.Module; this module wraps it from the outside. Without torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK) everything here is a single process and a no-op.

Checkpoints are strategy-independent: model weights are a plain full state dict and optimizer
state is keyed by parameter name (the format of torch.distributed.checkpoint's full optimizer
state dict), so a checkpoint written under DDP, ZeRO-1, FSDP or one process loads under any other.
"""
import contextlib
import inspect
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from checkpointing import clean_name

STRATEGIES = ("ddp", "zero1", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


def init(device_type, timeout_minutes):
    """Joins the process group torchrun describes (NCCL on GPUs, gloo on CPU); a plain process
    gets DistInfo() and no group. The timeout makes a rank whose peer died fail instead of hang."""
    if "RANK" not in os.environ:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                            timeout=timedelta(minutes=timeout_minutes))
    return info


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()


# what a collective raises when another rank died or stopped answering: gloo reports the broken
# connection, NCCL a DistBackendError (after dist_timeout_minutes, through its watchdog)
_PEER_FAILURE_SIGNS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "timed out",
                       "Timed out", "NCCL")


def is_peer_failure(error):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return False
    return isinstance(error, getattr(dist, "DistError", ())) or any(sign in str(error) for sign in _PEER_FAILURE_SIGNS)


def peer_failure_message(error):
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"rank {dist.get_rank()} lost contact with the other ranks ({type(error).__name__}: {first_line[:300]}). "
            f"Another rank most likely failed first: torchrun's 'Root Cause' section names it, and its own "
            f"error is above. Checkpoints written so far are complete (writes are atomic); resume with "
            f"--resume=latest, on this or another number of GPUs.")


def strategy_of(train_cfg):
    if train_cfg.use_fsdp:
        return "fsdp"
    return "zero1" if train_cfg.use_zero1 else "ddp"


# ---------------------------------------------------------------- wrapping

def wrap_model(model, info, strategy, compile_model, param_dtype, reshard_after_forward=True, compile_mode="default"):
    """The module the training step runs. DDP and ZeRO-1 compile first and then wrap (as
    nanoGPT does); FSDP shards each block plus the root and compiles block by block (as
    torchtitan does), which keeps compilation local to a block's shards."""
    if strategy == "fsdp" and info.enabled:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for block in model.blocks:
            if compile_model:
                block.compile(mode=_mode(compile_mode))
            fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        fully_shard(model, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        return model
    step_model = torch.compile(model, mode=_mode(compile_mode)) if compile_model else model
    if info.enabled:
        device_ids = [info.local_rank] if next(model.parameters()).is_cuda else None
        step_model = torch.nn.parallel.DistributedDataParallel(step_model, device_ids=device_ids)
    return step_model


def _mode(compile_mode):
    return None if compile_mode == "default" else compile_mode


def shard_optimizer(optimizer, info, strategy):
    """ZeRO-1: the same optimizer class and settings, each rank holding the state of its share."""
    if strategy != "zero1" or not info.enabled:
        return optimizer
    from torch.distributed.optim import ZeroRedundancyOptimizer
    groups = optimizer.param_groups
    # defaults may hold derived entries the constructor does not take (AdamW's decoupled_weight_decay)
    accepted = inspect.signature(type(optimizer).__init__).parameters
    settings = {key: value for key, value in optimizer.defaults.items() if key in accepted}
    zero = ZeroRedundancyOptimizer([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups[:1]],
                                   optimizer_class=type(optimizer), **settings)
    for group in groups[1:]:
        zero.add_param_group({"params": group["params"], "weight_decay": group["weight_decay"]})
    return zero


# ---------------------------------------------------------------- reductions

def mean_across_ranks(values, info):
    """Element-wise mean over ranks of a 1-D float tensor (a NaN on any rank makes it NaN on all)."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= info.world_size
    return values


def max_across_ranks(values, info):
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def gather_objects(obj, info):
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not info.enabled:
        return [obj]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info):
    if info.enabled:
        dist.barrier()


# ---------------------------------------------------------------- strategy-independent state

def full_model_state(model, strategy, info):
    """The full, unsharded state dict (on CPU on rank 0 under FSDP; every rank must call it)."""
    if strategy == "fsdp" and info.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


def load_full_model_state(model, state, strategy, info):
    if strategy == "fsdp" and info.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(state)


def full_optimizer_state(model, optimizer, strategy, info):
    """Optimizer state keyed by parameter name, complete on rank 0 (every rank must call it)."""
    if strategy == "fsdp" and info.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if strategy == "zero1" and info.enabled:
        optimizer.consolidate_state_dict(to=0)
        if not info.is_main:
            return {}
    return _named(optimizer.state_dict(), _param_names(model, optimizer))


def load_full_optimizer_state(model, optimizer, named_state, strategy, info):
    if strategy == "fsdp" and info.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, named_state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(_indexed(named_state, _param_names(model, optimizer)))
        if strategy == "zero1" and info.enabled:
            _steps_beside_parameters(optimizer.optim)


def _steps_beside_parameters(optimizer):
    """ZeroRedundancyOptimizer.load_state_dict moves every 0-dim state tensor (Adam's `step`) to
    the CPU, but fused and capturable AdamW need `step` on their parameter's device."""
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("capturable"):
            for param in group["params"]:
                state = optimizer.state.get(param, {})
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(param.device, torch.float32)


def _param_names(model, optimizer):
    """Plain names (see checkpointing.clean_name) in the order of the optimizer's parameter indices
    (group by group), so a state saved with activation checkpointing on loads with it off."""
    name_of = {id(p): clean_name(name) for name, p in model.named_parameters()}
    groups = optimizer.param_groups
    return [name_of[id(p)] for group in groups for p in group["params"]]


def _named(indexed_state, names):
    return {"state": {names[i]: s for i, s in indexed_state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in indexed_state["param_groups"]]}


def _indexed(named_state, names):
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[clean_name(name)]: s for name, s in named_state["state"].items()},
            "param_groups": [{**g, "params": [index[clean_name(n)] for n in g["params"]]}
                             for g in named_state["param_groups"]]}


@contextlib.contextmanager
def gradient_sync(model, enabled):
    """Skips the gradient all-reduce of a micro-step when not enabled: DDP's no_sync (which must
    cover the forward too) or FSDP2's set_requires_gradient_sync."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)
        yield
    elif not enabled and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield
