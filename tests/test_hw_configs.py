"""config/hw_*.py: each composes with every architecture config and fits its GPU for GPT-2 124M."""

import pytest

import memory_estimate as me
from conftest import REPO_ROOT
from configurator import load_config

ARCH_CONFIGS = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "config").glob("arch_*.py"))
# memory a training process can use (GiB): datasheet capacity less what the driver reserves (L4
# and H100 report about 22 and 79 GiB); GB10's 128 GB are shared with the CPU, so half is allowed
GPU_MEMORY_GIB = {"hw_l4.py": 22, "hw_w7900.py": 45, "hw_h100.py": 79, "hw_b200.py": 178, "hw_gb10.py": 64}


def test_every_hardware_config_is_checked():
    assert sorted(p.name for p in (REPO_ROOT / "config").glob("hw_*.py")) == sorted(GPU_MEMORY_GIB)
    assert "config/arch_gpt2.py" in ARCH_CONFIGS


@pytest.mark.parametrize("hw", sorted(GPU_MEMORY_GIB))
@pytest.mark.parametrize("arch", ARCH_CONFIGS)
def test_hardware_config_composes_with_architecture(monkeypatch, arch, hw):
    monkeypatch.chdir(REPO_ROOT)
    config, sources = load_config([arch, f"config/{hw}"])
    t = config.train
    assert sources["batch_size"] == f"config/{hw}" and t.dtype == "bfloat16" and t.compile is True
    assert config.model.arch_preset == load_config([arch])[0].model.arch_preset  # hw leaves the model alone
    for world_size in (1, 2, 4, 8):  # the global batch divides into whole micro-batches on 1-8 GPUs
        assert t.total_batch_size % (t.batch_size * config.model.block_size * world_size) == 0


@pytest.mark.parametrize("hw", sorted(GPU_MEMORY_GIB))
def test_hardware_config_fits_gpt2_124m_with_margin(monkeypatch, hw):
    monkeypatch.chdir(REPO_ROOT)
    config, _ = load_config(["config/arch_gpt2.py", f"config/{hw}"])
    t = config.train
    accumulation = t.total_batch_size // (t.batch_size * config.model.block_size)
    estimate = me.estimate_for_config(config, 1, accumulation, t.dtype, "cuda")
    free = GPU_MEMORY_GIB[hw] * me.GIB
    assert me.fits(estimate, free, margin=0.10)
    # and not wastefully small: four times the micro-batch would not fit, unless the micro-batch
    # already makes the whole global batch on 8 GPUs, or the GPU's memory is shared with the system
    if t.batch_size * config.model.block_size * 8 < t.total_batch_size and hw != "hw_gb10.py":
        bigger = me.estimate_for_config(config, 1, max(1, accumulation // 4), t.dtype, "cuda",
                                        batch_size=4 * t.batch_size)
        assert not me.fits(bigger, free, margin=0.10)
