"""torch's AdamW with its CUDA update as one Triton kernel per parameter group.

torch's fused AdamW (multi_tensor_apply) reads a parameter, its gradient and both moments and writes
the three back, 28 bytes per parameter; given a grad_scale (train_step's clipping) it also writes the
divided gradient back, 32 bytes. Measured on an H100 at GPT-2 124M (148 tensors, 124M parameters,
clipping on): 1.55 ms per update against 1.19 ms for this kernel, which reaches about 2.9 TB/s.

Each program updates BLOCK elements of one tensor. A table holds each tensor's addresses (parameter,
gradient, exp_avg, exp_avg_sq, step count) and size, another the (tensor, first element) of each
program; both are rebuilt when a parameter or gradient moves. The subclass keeps torch's parameter
groups, hyperparameters and state (the same keys, the step count on the device as torch's fused AdamW
keeps it), so checkpoints load in either. It falls back to torch's fused step where the kernel does
not apply: parameters that are not contiguous fp32 tensors on a KERNEL_DEVICES device (FSDP's
DTensors, say), amsgrad, maximize, a tensor lr, or GradScaler's found_inf (float16 training).

grad_scale, the attribute torch's fused AdamW reads to unscale gradients (train_step sets it to clip
inside the step), divides each gradient as it is read; the .grad tensors are left as they were.
"""
import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of PyTorch: available() is False and torch's AdamW runs
    triton = None

BLOCK, WARPS = 1024, 4  # elements per program, warps: the fastest measured on an H100 (2048 and up were slower)
KERNEL_DEVICES = ("cuda",)  # device types the kernel runs on (the tests add "cpu" under Triton's interpreter)


def available(device):
    """Whether the kernel can run for parameters on device (a device string)."""
    return triton is not None and torch.device(device).type in KERNEL_DEVICES


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW(..., fused=True) whose step runs the Triton kernel where it applies. The
    arguments are AdamW's, named as there (ZeRO-1 rebuilds the optimizer from them), less foreach and
    fused."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, capturable=False, differentiable=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, capturable=capturable, differentiable=differentiable, fused=True)
        self._plans = {}  # group index: (the addresses it was made for, its plan or None where the kernel cannot run)
        self._programs = {}  # the parameters' sizes: the program table

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._plans.clear()  # the moments are new tensors

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "_plans"):  # torch's __init__ adds the first groups before ours has run
            self._plans.clear()

    @torch.no_grad()
    def step(self, closure=None):
        plans = None if closure is not None or getattr(self, "found_inf", None) is not None else self._current_plans()
        if plans is None:
            return super().step(closure)
        grad_scale = getattr(self, "grad_scale", None)
        for group, plan in zip(self.param_groups, plans):
            if plan is not None:
                _update(group, plan, grad_scale)
        return None

    def _current_plans(self):
        """One plan per group (None for a group without gradients), or None where the kernel does
        not apply to some group."""
        plans = []
        for index, group in enumerate(self.param_groups):
            if (any(group[option] for option in ("amsgrad", "maximize", "capturable", "differentiable"))
                    or isinstance(group["lr"], torch.Tensor)):
                return None
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                plans.append(None)
                continue
            key = tuple((p.data_ptr(), p.grad.data_ptr()) for p in params)
            if index not in self._plans or self._plans[index][0] != key:
                self._plans[index] = (key, self._plan(params))
            if self._plans[index][1] is None:
                return None
            plans.append(self._plans[index][1])
        return plans

    def _plan(self, params):
        """(address table, program table, step counts) for the parameters, or None where the kernel
        does not apply to them."""
        if not all(_plain_fp32(p) and _plain_fp32(p.grad) and p.grad.device == p.device for p in params):
            return None
        states = [self._state(p) for p in params]
        if not all(_plain_fp32(s["exp_avg"]) and _plain_fp32(s["exp_avg_sq"]) and s["step"].device == p.device
                   and s["step"].dtype == torch.float32 for s, p in zip(states, params)):
            return None
        rows = [[p.data_ptr(), p.grad.data_ptr(), s["exp_avg"].data_ptr(), s["exp_avg_sq"].data_ptr(),
                 s["step"].data_ptr(), p.numel()] for p, s in zip(params, states)]
        return _to_device(rows, params[0].device), self._program_table(params), [s["step"] for s in states]

    def _program_table(self, params):
        """(tensor, first element) of each program, flattened; made once per set of sizes (gradients
        may move every step, sizes do not)."""
        sizes = tuple(p.numel() for p in params)
        if sizes not in self._programs:
            self._programs[sizes] = _to_device([[tensor, first] for tensor, size in enumerate(sizes)
                                                for first in range(0, size, BLOCK)], params[0].device).view(-1)
        return self._programs[sizes]

    def _state(self, p):
        """The parameter's AdamW state, created as torch's fused AdamW creates it."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state


def _to_device(rows, device):
    """An int64 table on device, copied through pinned memory without waiting for the device."""
    table = torch.tensor(rows, dtype=torch.int64)
    return table.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else table


def _plain_fp32(tensor):
    return (type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.dtype == torch.float32
            and tensor.device.type in KERNEL_DEVICES and tensor.is_contiguous() and not tensor.is_sparse)


def _update(group, plan, grad_scale):
    addresses, programs, steps = plan
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    _adamw_kernel[(programs.numel() // 2,)](
        programs, addresses, float(group["lr"]), float(group["weight_decay"]), beta1, beta2, group["eps"],
        math.log2(beta1), math.log2(beta2), steps[0] if grad_scale is None else grad_scale,  # unread without one
        HAS_GRAD_SCALE=grad_scale is not None, COLUMNS=addresses.shape[1], BLOCK=BLOCK, num_warps=WARPS)


if triton is not None:
    @triton.jit
    def _adamw_kernel(programs_ptr, addresses_ptr, lr, weight_decay, beta1, beta2, eps, log2_beta1, log2_beta2,
                      grad_scale_ptr, HAS_GRAD_SCALE: tl.constexpr, COLUMNS: tl.constexpr, BLOCK: tl.constexpr):
        program = tl.program_id(0)
        tensor = tl.load(programs_ptr + 2 * program)
        offsets = tl.load(programs_ptr + 2 * program + 1) + tl.arange(0, BLOCK)
        row = addresses_ptr + tensor * COLUMNS
        param_ptr = tl.load(row).to(tl.pointer_type(tl.float32))
        grad_ptr = tl.load(row + 1).to(tl.pointer_type(tl.float32))
        exp_avg_ptr = tl.load(row + 2).to(tl.pointer_type(tl.float32))
        exp_avg_sq_ptr = tl.load(row + 3).to(tl.pointer_type(tl.float32))
        step = tl.load(tl.load(row + 4).to(tl.pointer_type(tl.float32)))
        mask = offsets < tl.load(row + 5)
        param = tl.load(param_ptr + offsets, mask=mask)
        grad = tl.load(grad_ptr + offsets, mask=mask)
        exp_avg = tl.load(exp_avg_ptr + offsets, mask=mask)
        exp_avg_sq = tl.load(exp_avg_sq_ptr + offsets, mask=mask)
        if HAS_GRAD_SCALE:
            grad = grad / tl.load(grad_scale_ptr)
        # torch's AdamW order: decoupled weight decay, the moments, then the bias-corrected step
        param = param * (1.0 - lr * weight_decay)
        exp_avg = beta1 * exp_avg + (1.0 - beta1) * grad
        exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad
        bias_correction1 = 1.0 - tl.exp2(step * log2_beta1)
        bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp2(step * log2_beta2))
        param = param - (lr / bias_correction1) * exp_avg / (tl.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps)
        tl.store(param_ptr + offsets, param, mask=mask)
        tl.store(exp_avg_ptr + offsets, exp_avg, mask=mask)
        tl.store(exp_avg_sq_ptr + offsets, exp_avg_sq, mask=mask)
