"""Programmatic dependent launch (PDL) for torch.compile's Triton kernels, with every kernel waiting
for the one before it before it touches memory.

With PDL (NVIDIA GPUs of compute capability 9.0+) a kernel is launched while the kernel before it
still runs: its blocks are placed on the SMs the predecessor's tail leaves idle, and they wait
(griddepcontrol.wait) until the predecessor has completed and its writes are visible. That hides the
launch gap between kernels. Inductor's own placement (TORCHINDUCTOR_ENABLE_PDL=1) puts the wait
before the first access to a buffer the previous kernel used (matched by name), else just after the
kernel's first load, and none at all in a kernel that loads nothing, such as the zero-fill of the
embedding gradient. Such a kernel can complete before its predecessor has, and the next kernel's
wait then covers only the zero-fill: it can read what the predecessor is still writing, and the
zero-fill itself can overwrite memory the predecessor still reads (freed buffers are reused). Here
every Inductor kernel waits first, before any load or store, so no kernel touches memory before the
kernel before it has completed, and by induction before every earlier kernel has. Kernels launched
without PDL (cuBLAS, cuDNN, this project's own Triton kernels) wait for all earlier work as stream
order has it.

Measured on H100s (GPT-2 124M, batch 32, BENCHMARKS.md): +0.45% tokens/s on average over 7
alternating pairs on three machines; on the one machine where both ran, no slower than Inductor's
own placement (603,557 against 602,375 tokens/s, 3 runs each), which left 33 of the step's 65
kernels touching memory before their wait. The rule is a wrapper around a private Inductor method;
where a torch lacks it, PDL stays off.
"""
import functools
import warnings

import torch
import torch._inductor.config as inductor_config
from torch._inductor import custom_graph_pass

import hardware

_rule_installed = False
# Inductor's own setting, as the environment made it (TORCHINDUCTOR_ENABLE_PDL); None where this torch has none
_INDUCTOR_SETTING = getattr(inductor_config.triton, "enable_pdl", None)


def unavailable_reason(device: str, compiled: bool) -> str | None:
    """Why PDL cannot run for the step on device, or None when it can."""
    if not compiled:
        return "it applies to torch.compile's kernels and the step is not compiled"
    if not device.startswith("cuda") or hardware.is_rocm():
        return f"it needs an NVIDIA GPU (device is {device})"
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if major < 9:
        return f"it needs compute capability 9.0+ (this GPU has {major}.{minor})"
    kernel = _triton_kernel_class()
    hooks = ("_filter_pdl", "GDC_WAIT", "_enable_pdl_codegen")
    if _INDUCTOR_SETTING is None or kernel is None or not all(hasattr(kernel, name) for name in hooks):
        return f"this torch ({torch.__version__}) has no Inductor PDL code generation this module knows"
    if inductor_config.post_grad_custom_pre_pass not in (None, _RULE_IN_CACHE_KEY):
        return ("torch._inductor.config.post_grad_custom_pre_pass, where it keeps its rule in Inductor's cache "
                "key, is taken")
    return None


def enable(requested: bool | None, device: str, compiled: bool, world_size: int = 1) -> bool:
    """Turns PDL on for the Triton kernels torch.compile generates from now on in this process, with
    the wait-first rule. requested None: where it can run in a single-process run, the only kind it
    was measured in (with several ranks NCCL's kernels run on their own streams beside the step's);
    True: wherever it can run, with one warning where it cannot; False: off. Off, Inductor's setting
    goes back to what the environment made it, so a later step in the same process (bench.py's
    sweeps) is not compiled with an earlier one's. Returns whether it is on."""
    if requested is None and world_size > 1:
        requested = False
    reason = None if requested is False else unavailable_reason(device, compiled)
    if reason and requested:
        warnings.warn(f"dependent_launch=True is ignored: programmatic dependent launch is off because {reason}.",
                      stacklevel=2)
    on = requested is not False and reason is None
    if on:
        _install_wait_first_rule()
    if _INDUCTOR_SETTING is not None:
        inductor_config.triton.enable_pdl = on or _INDUCTOR_SETTING
    return on


def _triton_kernel_class():
    try:
        from torch._inductor.codegen.triton import TritonKernel
    except ImportError:
        return None
    return TritonKernel


def wait_first(filter_pdl):
    """Wraps Inductor's TritonKernel._filter_pdl (which keeps a kernel body's first wait and its last
    launch-dependents line) so that the body's first line is a wait: the original filter then drops
    every later wait, and the launch of dependents stays after it."""
    @functools.wraps(filter_pdl)
    def filter_with_wait_first(kernel, body):
        if kernel._enable_pdl_codegen():
            body._lines.insert(0, kernel.GDC_WAIT)
        filter_pdl(kernel, body)
    return filter_with_wait_first


class _RuleInCacheKey(custom_graph_pass.CustomGraphPass):
    """A pass that changes nothing, set so that Inductor's FX graph cache keys carry this module's
    hash: code compiled with Inductor's own wait placement is never reused under this rule."""

    def __call__(self, graph):
        pass

    def uuid(self):
        return custom_graph_pass.get_hash_for_files((__file__,))


_RULE_IN_CACHE_KEY = _RuleInCacheKey()


def _install_wait_first_rule():
    global _rule_installed
    if _rule_installed:
        return
    kernel = _triton_kernel_class()
    kernel._filter_pdl = wait_first(kernel._filter_pdl)
    inductor_config.post_grad_custom_pre_pass = _RULE_IN_CACHE_KEY
    _rule_installed = True
