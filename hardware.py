"""What the machine is and what it can do: device and dtype choice, peak FLOPS, MFU, memory.

MFU here is model FLOPs utilisation as PaLM defines it: the model's FLOPs per token from
model_builder's architecture-aware count (forward + backward, no activation recomputation),
times tokens per second per device, over that device's dense peak for the dtype in use.
"""
import contextlib
import platform
import resource
import sys
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PeakFlops:
    tflops: float
    source: str
    estimate: bool = False


# Dense (not 2:4 sparse) peak TFLOPS per GPU. Keys: (name substrings that must all match, names
# that must not), values: {dtype: TFLOPS}. First match wins, so specific entries come first.
_PEAKS = [
    (("h100", "pcie"), (), {"bfloat16": 756, "float16": 756, "fp8": 1513}, "NVIDIA H100 PCIe datasheet"),
    (("h100",), (), {"bfloat16": 989, "float16": 989, "fp8": 1979}, "NVIDIA H100 SXM datasheet"),
    (("h200",), (), {"bfloat16": 989, "float16": 989, "fp8": 1979}, "NVIDIA H200 datasheet"),
    (("b200",), (), {"bfloat16": 2250, "float16": 2250, "fp8": 4500}, "NVIDIA B200 (HGX) datasheet"),
    (("a100",), (), {"bfloat16": 312, "float16": 312, "float32": 156}, "NVIDIA A100 datasheet (float32: TF32)"),
    (("l4",), ("l40",), {"bfloat16": 121, "float16": 121, "fp8": 242}, "NVIDIA L4 datasheet"),
    (("4090",), (), {"bfloat16": 165, "float16": 165, "fp8": 330}, "NVIDIA Ada (RTX 4090) whitepaper"),
    (("mi300x",), (), {"bfloat16": 1307, "float16": 1307, "fp8": 2615}, "AMD Instinct MI300X datasheet"),
    (("w7900",), (), {"bfloat16": 122.6, "float16": 122.6}, "AMD Radeon PRO W7900 datasheet"),
    # NVIDIA quotes 1 PFLOP of sparse FP4 for DGX Spark; halving for dense, then halving per step
    # of precision (FP4 -> FP8 -> BF16) gives 125. Not a datasheet figure.
    (("gb10",), (), {"bfloat16": 125, "float16": 125, "fp8": 250}, "estimate from NVIDIA's 1 PFLOP sparse FP4"),
]


def peak_tflops(device_name, dtype_name, fp8=False):
    """The dense peak for this GPU and dtype, or None where unknown (CPU, MPS, unlisted GPUs)."""
    name = device_name.lower()
    for needed, excluded, table, source in _PEAKS:
        if all(n in name for n in needed) and not any(e in name for e in excluded):
            value = table.get("fp8" if fp8 else dtype_name)
            return PeakFlops(value, source, estimate=source.startswith("estimate")) if value else None
    return None


def mfu(flops_per_token, tokens_per_second_per_device, peak):
    """Achieved model FLOPs per second per device over the dense peak (peak in TFLOPS)."""
    if peak is None:
        return None
    return flops_per_token * tokens_per_second_per_device / (peak * 1e12)


def mfu_unavailable_message(device_name):
    return (f"MFU n/a: no dense peak FLOPS is known for '{device_name}'. Set --peak_tflops=<the dense "
            f"TFLOPS of one device for your dtype> to get MFU.")


def pick_device(requested):
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if _mps_available() else [])
    if requested == "auto":
        return "cuda" if "cuda" in available else "mps" if "mps" in available else "cpu"
    if requested.split(":")[0] in available:
        return requested
    raise ValueError(f"device={requested!r} is not available on this machine. Available: auto, "
                     f"{', '.join(available)} (cuda also as cuda:N).")


def _mps_available():
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(requested, device):
    kind = device.split(":")[0]
    if requested == "auto":
        if kind == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if kind == "mps" else "float32"
    if requested not in DTYPES:
        raise ValueError(f"dtype={requested!r} is not accepted. Accepted values: auto, {', '.join(DTYPES)}.")
    if requested == "bfloat16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"dtype='bfloat16' is not supported by {device_name(device)}; use dtype='float16' "
                         f"(with loss scaling) or 'auto'.")
    return requested


def torch_dtype(name):
    return DTYPES[name]


def needs_grad_scaler(dtype_name, device):
    return dtype_name == "float16" and device.startswith("cuda")


def autocast_context(device, dtype_name):
    kind = device.split(":")[0]
    if dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=kind, dtype=DTYPES[dtype_name])


def enable_tf32():
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def is_rocm():
    return torch.version.hip is not None


def device_name(device):
    kind = device.split(":")[0]
    if kind == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    if kind == "mps":
        return "Apple MPS"
    return f"CPU ({platform.processor() or platform.machine()})"


def memory_stats(device):
    """Memory in MiB: the allocator's view on CUDA, the process's resident set on CPU."""
    kind = device.split(":")[0]
    if kind == "cuda":
        return {"memory_allocated_mib": torch.cuda.memory_allocated(device) / 2**20,
                "memory_reserved_mib": torch.cuda.memory_reserved(device) / 2**20,
                "memory_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    if kind == "mps":
        return {"memory_allocated_mib": torch.mps.current_allocated_memory() / 2**20,
                "memory_reserved_mib": torch.mps.driver_allocated_memory() / 2**20}
    # ru_maxrss is KiB on Linux, bytes on macOS
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"memory_peak_rss_mib": peak_rss}


def free_device_memory_bytes(device):
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return None
