"""What the machine is and what it can do: device and dtype choice, peak FLOPS, MFU, memory.

MFU is model FLOPs utilisation as the PaLM paper defines it:

    MFU = flops_per_token * tokens_per_second_per_device / (peak_tflops * 1e12)

flops_per_token is the model's architecture-aware training count (forward + backward, from
model_builder), not the hardware's: activation recomputation is not counted, so MFU does not
reward recomputing. peak_tflops is one device's dense (not 2:4 sparse) peak for the dtype in use.
"""
import contextlib
import os
import platform
import re
import resource
import sys
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIB = 2**20


# ---------------------------------------------------------------- device and dtype

def pick_device(requested: str) -> str:
    """'auto' picks cuda (also true on ROCm), then mps, then cpu; an explicit choice is checked."""
    available = available_devices()
    if requested == "auto":
        return available[0]
    kind, _, index = requested.partition(":")
    if kind == "cuda" and index:
        usable = index.isdigit() and int(index) < torch.cuda.device_count()
    else:
        usable = kind in available and not index
    if usable:
        return requested
    choices = ["auto", *available]
    if "cuda" in available:
        choices.append(f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    raise ValueError(f"device={requested!r} is not available on this machine. Available: {', '.join(choices)}.")


def available_devices() -> list[str]:
    """In order of preference."""
    found = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    return [device for device, present in found.items() if present]


def pick_dtype(requested: str, device: str) -> str:
    """'auto' picks the fastest dtype that trains without surprises on this device."""
    kind = device.split(":")[0]
    if requested == "auto":
        if kind == "cuda":
            return "bfloat16" if _cuda_bf16_supported() else "float16"
        # float16 on MPS would need loss scaling; float32 is the safe fallback before macOS 14
        if kind == "mps":
            return "bfloat16" if _mps_bf16_supported() else "float32"
        return "float32"
    if requested not in DTYPES:
        raise ValueError(f"dtype={requested!r} is not a dtype this workbench trains in. "
                         f"Accepted: auto, {', '.join(DTYPES)}.")
    if requested == "bfloat16" and kind == "cuda" and not _cuda_bf16_supported():
        raise ValueError(f"dtype='bfloat16' is not supported natively by {device_name(device)} (needs compute "
                         f"capability 8.0+ on NVIDIA); use dtype='float16' (trained with loss scaling) or 'auto'.")
    if requested == "bfloat16" and kind == "mps" and not _mps_bf16_supported():
        raise ValueError("dtype='bfloat16' on MPS needs macOS 14 or newer; use dtype='float32' or 'auto'.")
    return requested


def _cuda_bf16_supported():
    # without including_emulation=False, pre-Ampere GPUs report bf16 that runs emulated and slow
    return torch.cuda.is_bf16_supported(including_emulation=False)


def _mps_bf16_supported():
    return torch.backends.mps.is_macos_or_newer(14, 0)


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def needs_grad_scaler(dtype_name: str, device: str) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 has float32's range."""
    return dtype_name == "float16" and device.startswith("cuda")


def residual_stream_dtype(option: str, dtype_name: str) -> torch.dtype:
    """The dtype of the blocks' residual stream (TrainConfig.residual_dtype). 'auto': bfloat16 when
    training in bfloat16, as in llm.c and as FSDP's bfloat16 parameters give anyway: every norm,
    residual add and saved block input of a pre-norm block moves half the bytes (a post-norm block
    ends in a norm, whose output autocast keeps in float32). float32 otherwise, since a float16
    residual sum can overflow. 'float32': nanoGPT's autocast behaviour, float32 embeddings and
    residual sums."""
    return torch.bfloat16 if option == "auto" and dtype_name == "bfloat16" else torch.float32


def autocast_context(device: str, dtype_name: str):
    if dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=DTYPES[dtype_name])


def matmul_dtype(x):
    """The dtype a matmul on x runs in: autocast's when autocast is on for x's device, else x's own.
    The fused kernels (fused_mlp, qkv_projection) cast to it and run with autocast off."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def enable_tf32():
    """float32 matmuls in TF32 on tensor cores (Ampere and later); a no-op without CUDA.

    set_float32_matmul_precision keeps the legacy allow_tf32 flag and the newer fp32_precision
    setting in agreement; setting only one of them makes torch.compile fail when it reads the
    other. cuDNN convolutions already default to TF32."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")


def is_rocm() -> bool:
    return torch.version.hip is not None


def device_name(device: str) -> str:
    kind = device.split(":")[0]
    if kind == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    if kind == "mps":
        return "Apple MPS"
    return f"CPU ({platform.processor() or platform.machine()})"


# ---------------------------------------------------------------- peak FLOPS and MFU

@dataclass(frozen=True)
class PeakFlops:
    tflops: float
    source: str
    estimate: bool = False

    def __str__(self):
        return f"{self.tflops:g} TFLOPS dense ({self.source})" + (" (estimate)" if self.estimate else "")


@dataclass(frozen=True)
class _GpuPeaks:
    """Dense TFLOPS of one GPU, found by regular expressions on its lower-cased name."""
    name: str
    half: float  # bfloat16 and float16, which run at the same rate on every GPU listed
    fp8: float | None
    source: str
    unless: str | None = None
    tf32: float | None = None
    estimate: bool = False


# Vendors quote 2:4-sparse figures beside dense ones; these are the dense ones. The first entry
# that matches wins. Variants with their own, lower figures (H100/H200 NVL, GH200, GB200) are
# left out rather than given a neighbour's numbers: they get "MFU n/a" and --peak_tflops.
_GPU_PEAKS = [
    _GpuPeaks(r"\bb200\b", 2250, 4500, "NVIDIA HGX B200 datasheet"),
    _GpuPeaks(r"\bh100\b.*\bpcie\b", 756, 1513, "NVIDIA H100 PCIe datasheet"),
    _GpuPeaks(r"\bh100\b", 989, 1979, "NVIDIA H100 SXM datasheet", unless=r"\bnvl\b"),
    _GpuPeaks(r"\bh200\b", 989, 1979, "NVIDIA H200 SXM datasheet", unless=r"\bnvl\b"),
    _GpuPeaks(r"\ba100\b", 312, None, "NVIDIA A100 datasheet", tf32=156),
    _GpuPeaks(r"\bl4\b", 121, 242, "NVIDIA L4 datasheet"),
    _GpuPeaks(r"\b4090\b", 165, 330, "NVIDIA Ada Lovelace architecture whitepaper, RTX 4090, FP32 accumulate"),
    _GpuPeaks(r"\bmi300x\b", 1307, 2615, "AMD Instinct MI300X datasheet"),
    _GpuPeaks(r"\bw7900\b", 122.6, None, "AMD Radeon PRO W7900 datasheet"),
    # DGX Spark: NVIDIA quotes only 1 PFLOP of sparse FP4. Dense is half (500), and each step up
    # in precision halves it again: FP8 250, BF16 125.
    _GpuPeaks(r"\bgb10\b", 125, 250, "derived from NVIDIA's 1 PFLOP sparse FP4 for DGX Spark", estimate=True),
]


def run_peak_tflops(override, device_name, dtype_name):
    """The peak a run's MFU is taken against: the peak_tflops option, else the table's figure, else None."""
    return override or getattr(peak_tflops(device_name, dtype_name), "tflops", None)


def peak_tflops(device_name: str, dtype_name: str, fp8: bool = False) -> PeakFlops | None:
    """One device's dense peak for the dtype; None for CPUs, MPS and GPUs not in the table.

    float32 is only known where the table has a TF32 figure, which assumes enable_tf32()."""
    name = device_name.lower()
    for gpu in _GPU_PEAKS:
        if re.search(gpu.name, name) and not (gpu.unless and re.search(gpu.unless, name)):
            by_dtype = {"bfloat16": gpu.half, "float16": gpu.half, "float32": gpu.tf32}
            tflops = gpu.fp8 if fp8 else by_dtype.get(dtype_name)
            return PeakFlops(tflops, gpu.source, gpu.estimate) if tflops is not None else None
    return None


def mfu_unavailable_message(device_name: str) -> str:
    return (f"MFU n/a: peak FLOPS unknown for {device_name}; set --peak_tflops=<dense TFLOPS of one device "
            f"for your dtype> to get MFU.")


def mfu(flops_per_token: float, tokens_per_second_per_device: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation (see the module docstring); None when the peak is unknown."""
    if peak_tflops is None:
        return None
    return flops_per_token * tokens_per_second_per_device / (peak_tflops * 1e12)


# ---------------------------------------------------------------- memory

def memory_stats(device: str) -> dict:
    """Memory in MiB: the allocator's view on CUDA and MPS, the process's resident set on CPU.

    A figure the platform does not report is None."""
    kind = device.split(":")[0]
    if kind == "cuda":
        return {"memory_allocated_mib": torch.cuda.memory_allocated(device) / MIB,
                "memory_reserved_mib": torch.cuda.memory_reserved(device) / MIB,
                "memory_peak_mib": torch.cuda.max_memory_allocated(device) / MIB}
    if kind == "mps":
        return {"memory_allocated_mib": torch.mps.current_allocated_memory() / MIB,
                "memory_reserved_mib": torch.mps.driver_allocated_memory() / MIB,
                "memory_peak_mib": None}
    return {"memory_rss_mib": _current_rss_mib(), "memory_peak_rss_mib": _peak_rss_mib()}


def _current_rss_mib():
    # /proc is Linux only; elsewhere the current RSS needs psutil, which is not a dependency
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except OSError:
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / MIB


def _peak_rss_mib():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def free_device_memory_bytes(device: str) -> int | None:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return None
