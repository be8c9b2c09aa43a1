import pytest
import torch

import hardware


@pytest.mark.parametrize("name, dtype, fp8, tflops", [
    ("NVIDIA B200", "bfloat16", False, 2250),
    ("NVIDIA B200", "bfloat16", True, 4500),
    ("NVIDIA H100 80GB HBM3", "bfloat16", False, 989),
    ("NVIDIA H100 80GB HBM3", "bfloat16", True, 1979),
    ("NVIDIA H100 PCIe", "bfloat16", False, 756),
    ("NVIDIA H100 PCIe", "float16", True, 1513),
    ("NVIDIA H200", "bfloat16", False, 989),
    ("NVIDIA H200", "bfloat16", True, 1979),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", False, 312),
    ("NVIDIA A100 80GB PCIe", "float16", False, 312),
    ("NVIDIA A100-SXM4-40GB", "float32", False, 156),
    ("NVIDIA L4", "bfloat16", False, 121),
    ("NVIDIA L4", "bfloat16", True, 242),
    ("NVIDIA GeForce RTX 4090", "bfloat16", False, 165),
    ("NVIDIA GeForce RTX 4090", "bfloat16", True, 330),
    ("AMD Instinct MI300X", "bfloat16", False, 1307),
    ("AMD Instinct MI300X", "bfloat16", True, 2615),
    ("AMD Radeon PRO W7900", "float16", False, 122.6),
    ("NVIDIA GB10", "bfloat16", False, 125),
])
def test_peak_tflops_by_device_name(name, dtype, fp8, tflops):
    peak = hardware.peak_tflops(name, dtype, fp8=fp8)
    assert peak.tflops == tflops
    assert peak.source
    assert peak.estimate == (name == "NVIDIA GB10")


def test_the_estimate_says_so():
    assert str(hardware.peak_tflops("NVIDIA GB10", "bfloat16")).endswith("(estimate)")
    assert "estimate" not in str(hardware.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16"))


@pytest.mark.parametrize("name, dtype, fp8", [
    ("NVIDIA L40S", "bfloat16", False),  # "L4" must not match the L40 family
    ("NVIDIA H100 NVL", "bfloat16", False),  # own, lower figures: not the SXM ones
    ("NVIDIA GH200 480GB", "bfloat16", False),
    ("NVIDIA GB200", "bfloat16", False),
    ("NVIDIA H100 80GB HBM3", "float32", False),  # no TF32 figure in the table: none invented
    ("NVIDIA A100-SXM4-80GB", "bfloat16", True),  # A100 has no FP8
    ("AMD Radeon PRO W7900", "bfloat16", True),
    ("NVIDIA Tesla T4", "float16", False),
    ("Apple MPS", "bfloat16", False),
    ("cpu", "float32", False),
    (hardware.device_name("cpu"), "float32", False),
])
def test_peak_tflops_unknown_is_none(name, dtype, fp8):
    assert hardware.peak_tflops(name, dtype, fp8=fp8) is None


def test_mfu_by_hand():
    # GPT-2 124M at block 1024: 6N plus attention 12 * n_layer * n_embd * T
    flops_per_token = 6 * 124e6 + 12 * 12 * 768 * 1024  # 744_000_000 + 113_246_208 = 857_246_208
    # 857_246_208 * 474_000 = 406_334_702_592_000 FLOP/s achieved, over 989e12 FLOP/s peak
    assert hardware.mfu(flops_per_token, 474_000, 989) == pytest.approx(406_334_702_592_000 / 989e12, rel=1e-9)
    assert hardware.mfu(flops_per_token, 474_000, 989) == pytest.approx(0.410854, rel=1e-6)


def test_mfu_without_a_peak_is_none():
    assert hardware.mfu(1e9, 1e5, None) is None
    assert "--peak_tflops" in hardware.mfu_unavailable_message("NVIDIA Tesla T4")


def test_cpu_choices():
    assert hardware.pick_device("auto") == "cpu"
    assert hardware.pick_device("cpu") == "cpu"
    assert hardware.pick_dtype("auto", "cpu") == "float32"
    assert hardware.pick_dtype("bfloat16", "cpu") == "bfloat16"
    assert not hardware.needs_grad_scaler("float32", "cpu")
    assert hardware.needs_grad_scaler("float16", "cuda:1")
    assert hardware.torch_dtype("bfloat16") is torch.bfloat16


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps", "tpu", "cpu:0"])
def test_unavailable_device_names_key_and_value(device):
    with pytest.raises(ValueError, match=f"device='{device}'.*Available: auto, cpu"):
        hardware.pick_device(device)


def test_bad_dtype_names_key_and_value():
    with pytest.raises(ValueError, match="dtype='fp16'.*auto, float32, bfloat16, float16"):
        hardware.pick_dtype("fp16", "cpu")


def test_autocast_only_for_reduced_precision():
    with hardware.autocast_context("cpu", "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with hardware.autocast_context("cpu", "bfloat16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


@pytest.mark.parametrize("option, dtype, expected", [
    ("auto", "bfloat16", torch.bfloat16), ("auto", "float16", torch.float32), ("auto", "float32", torch.float32),
    ("float32", "bfloat16", torch.float32)])
def test_residual_stream_is_bf16_only_when_training_in_bf16(option, dtype, expected):
    assert hardware.residual_stream_dtype(option, dtype) == expected


def test_device_facts_on_cpu():
    assert hardware.device_name("cpu").startswith("CPU (")
    assert hardware.is_rocm() is False
    assert hardware.free_device_memory_bytes("cpu") is None
    hardware.enable_tf32()  # harmless without CUDA


def test_cpu_memory_is_the_process_rss():
    stats = hardware.memory_stats("cpu")
    assert stats["memory_rss_mib"] > 0 and stats["memory_peak_rss_mib"] > 0


def test_matmul_dtype_is_autocasts_when_it_is_on_for_the_tensors_device():
    x = torch.randn(2, 3)
    assert hardware.matmul_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert hardware.matmul_dtype(x) == torch.bfloat16
    assert hardware.matmul_dtype(x.to(torch.float16)) == torch.float16
