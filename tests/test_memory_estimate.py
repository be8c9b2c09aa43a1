"""memory_estimate: activations against what autograd really saves, the whole estimate against a
CPU process's peak RSS, the dry run, the preflight refusal, the batch-size search, materialize."""
import os
import re
import resource
import subprocess
import sys
import time

import pytest
import torch

import memory_estimate as me
from conftest import REPO_ROOT
from configurator import load_config
from model_builder import build_model
from model_config import GPT2_SIZES, ModelConfig

GIB = 2**30


def saved_for_backward_bytes(model, idx):
    """Bytes of the distinct non-parameter storages autograd saves during model(idx)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(idx)
    return sum(saved.values())


@pytest.mark.parametrize("preset, options", [
    ("gpt2", {}), ("llama", {}), ("team", {}), ("hybrid", {}), ("gpt2", {"activation": "relu"}),
    ("llama", {"n_kv_head": 2}), ("gpt2", {"attention_backend": "manual"}), ("gpt2", {"dropout": 0.1}),
    ("gpt2", {"attention_type": "mla"}), ("llama", {"attention_type": "mla"}), ("team", {"attention_type": "mla"}),
    ("gpt2", {"attention_type": "mla", "attention_backend": "manual"}),
    ("gpt2", {"attention_type": "reciprocal", "ra_self_restart": True}), ("team", {"attention_type": "reciprocal"}),
    ("llama", {"ffn_type": "rmlp", "rmlp_mixer": True, "rmlp_gates": True}),
    ("gpt2", {"kv_pruning": "fixed", "kv_keep_recent": 4}), ("gpt2", {"kv_pruning": "learned", "kv_keep_recent": 4}),
    ("team", {"kv_pruning": "fixed", "kv_keep_recent": 4, "kv_prune_values_only": True}),
])
def test_activation_bytes_match_what_autograd_saves(preset, options):
    cfg = ModelConfig.from_preset(preset, n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=128, **options)
    batch, tokens = 4, 4 * 32
    torch.manual_seed(0)
    measured = saved_for_backward_bytes(build_model(cfg), torch.randint(0, 128, (batch, 32)))
    estimated = (cfg.n_layer * me.block_activation_bytes(cfg, tokens, 4, 4, on_cuda=False)
                 + me.final_activation_bytes(cfg, tokens, 4, 4, on_cuda=False))
    # the targets (int64) are counted by the estimate but not passed here
    assert estimated - 8 * tokens == pytest.approx(measured, rel=0.03)


RSS_SCRIPT = """
import contextlib, resource, sys
import torch
import memory_estimate as me
from model_config import ModelConfig
from optimizers import build_optimizer
from train_config import TrainConfig
from train_step import train_step

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()

cfg = ModelConfig.from_preset("gpt2", n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=8192)
# one step of a tiny model first, so kernels and library pages are loaded before the baseline
tiny = me.materialize(ModelConfig.from_preset("gpt2", n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64), "cpu")
ids = torch.randint(0, 64, (2, 16))
train_step(tiny, build_optimizer(tiny, TrainConfig(), "cpu"), lambda: (ids, ids), 1, contextlib.nullcontext(), 1.0)
del tiny
before = rss()
model = me.materialize(cfg, "cpu")
optimizer = build_optimizer(model, TrainConfig(), "cpu")
batch = lambda: (torch.randint(0, 8192, (8, 256)), torch.randint(0, 8192, (8, 256)))
for _ in range(2):  # the second step runs forward and backward with the Adam moments allocated
    train_step(model, optimizer, batch, 1, contextlib.nullcontext(), 1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and ru_maxrss in KiB")
def test_estimate_within_25_percent_of_peak_rss_growth_on_cpu():
    """Compared: estimate_memory(...).peak for float32 on the CPU with AdamW, and the growth of the
    process's peak resident set (ru_maxrss) over its resident set before the model was built,
    through two training steps. glibc is told to return freed blocks of 128 KiB and more, so the
    resident set follows live tensors rather than the heap glibc keeps (without it the measured
    growth is about 15% higher than the live peak)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "2",
           "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", RSS_SCRIPT], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    measured = int(result.stdout.split()[-1])
    cfg = ModelConfig.from_preset("gpt2", n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=8192)
    estimated = me.estimate_memory(cfg, 8, dtype="float32", device="cpu").peak
    assert measured > 300 * 2**20  # the model dominates the noise
    assert estimated == pytest.approx(measured, rel=0.25)


def gpt2_config(*overrides):
    return load_config(["config/arch_gpt2.py", *overrides])[0]


def test_dry_run_of_gpt2_1_5b_is_fast_and_allocates_nothing():
    size = GPT2_SIZES["1.5B"]
    config = gpt2_config(*(f"--{k}={v}" for k, v in size.items()), "--batch_size=8", "--keep_checkpoints=3")
    me.dry_run_report(gpt2_config(), 1, None, 1, "bfloat16")  # imports and first-call costs outside the timing
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    report = me.dry_run_report(config, 1, 80 * GIB, 8, "bfloat16", "cuda", train_tokens=None)
    assert time.perf_counter() - start < 5
    growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert growth_kib < 200 * 1024  # a real fp32 copy would be 5.8 GiB
    params = 48 * 12 * 1600**2 + 48 * 13 * 1600 + 50304 * 1600 + 1024 * 1600 + 2 * 1600
    assert config.model.arch_name in report
    assert f"parameters {params:,}" in report
    assert "training FLOPs/token 10.27G" in report
    weights = 4 * params / GIB
    assert f"weights {weights:.2f} GiB + Adam moments {2 * weights:.2f} GiB" in report
    assert "latest + backup 2, rolling 3, epoch 0 training states" in report
    assert re.search(r"device total +\d+\.\d\d GiB +fits in 80\.00 GiB free", report)
    assert "generation KV cache (mha, 16-bit): 300.0 KiB per token" in report  # 2 x 48 layers x 1600, 16-bit


def test_dry_run_counts_research_components():
    mha = me.dry_run_report(gpt2_config(), 1, None, 1, "bfloat16")
    config = gpt2_config("--attention_type=reciprocal", "--ffn_type=rmlp", "--rmlp_mixer=True", "--kv_pruning=fixed")
    report = me.dry_run_report(config, 1, None, 1, "bfloat16")
    assert "RA4-AbsPos-LN-GELU-RMLP768Mix" in report and "kv_pruning_scores" in report
    assert "kv_pruning=fixed keeps 14.2 KiB per token (saves 61%)" in report

    def activations(text):
        return float(re.search(r"activations \(12 blocks stored\) +([\d.]+) GiB", text).group(1))

    assert activations(report) > activations(mha)


def test_preflight_refuses_an_oversized_run_and_suggests_a_batch_that_keeps_the_global_batch():
    size = GPT2_SIZES["774M"]
    config = gpt2_config(*(f"--{k}={v}" for k, v in size.items()), "--batch_size=32",
                         "--gradient_accumulation_steps=4")
    free = 40 * GIB
    refusal = me.preflight(config, 1, free, 4, "bfloat16", "cuda", margin=0.10)
    assert refusal and "does not fit" in refusal and "--ignore_memory_check=True" in refusal
    batch = int(re.search(r"--batch_size=(\d+)", refusal).group(1))
    accumulation = int(re.search(r"--gradient_accumulation_steps=(\d+)", refusal).group(1))
    assert batch * accumulation == 32 * 4
    assert "131,072 tokens" in refusal
    assert me.fits(me.estimate_for_config(config, 1, accumulation, "bfloat16", batch_size=batch), free, 0.10)
    larger = 2 * batch  # the next divisor of 128 must not fit, or the suggestion was not the largest
    assert not me.fits(me.estimate_for_config(config, 1, 128 // larger, "bfloat16", batch_size=larger), free, 0.10)
    assert me.preflight(config, 1, 200 * GIB, 4, "bfloat16") is None
    assert me.preflight(config, 1, None, 4, "bfloat16") is None  # CPU: free memory unknown


def test_preflight_with_nothing_that_fits_points_to_sharding():
    config = gpt2_config(*(f"--{k}={v}" for k, v in GPT2_SIZES["1.5B"].items()))
    refusal = me.preflight(config, 1, 12 * GIB, 1, "bfloat16")
    assert "--use_fsdp=True" in refusal and "Even batch_size=1" in refusal


def test_sharding_strategies_divide_the_states():
    cfg = ModelConfig.from_preset("gpt2", **GPT2_SIZES["350M"])
    counts = me.param_counts(me.meta_model(cfg))
    single = me.estimate_memory(cfg, 8, counts=counts)
    ddp = me.estimate_memory(cfg, 8, world_size=4, strategy="ddp", counts=counts)
    zero1 = me.estimate_memory(cfg, 8, world_size=4, strategy="zero1", counts=counts)
    fsdp = me.estimate_memory(cfg, 8, world_size=4, strategy="fsdp", counts=counts)
    assert ddp.resident["DDP gradient buckets"] == 4 * counts.total
    assert zero1.resident["optimizer state (2 fp32 moments)"] == 8 * me.zero1_largest_share(counts, 4)
    assert counts.total / 4 <= me.zero1_largest_share(counts, 4) < counts.total / 4 + counts.largest
    assert fsdp.resident["parameters (fp32)"] == 4 * counts.total // 4
    assert fsdp.peak < single.peak < ddp.peak
    full = me.estimate_memory(cfg, 8, activation_checkpointing="full", counts=counts)
    selective = me.estimate_memory(cfg, 8, activation_checkpointing="selective", counts=counts)
    assert full.peak < selective.peak < single.peak


def test_zero1_partition_is_greedy_largest_first():
    counts = me.ParamCounts(total=0, non_embedding=0, linear=0, prunable=0, block=0, embedding_table=0,
                            largest=10, decay_sizes=(10, 6, 5, 4), other_sizes=(1, 1))
    # 10 -> r0; 6 -> r1; 5 -> r1 (11); 4 -> r0 (14); 1 -> r1 (12); 1 -> r1 (13)
    assert me.zero1_largest_share(counts, 2) == 14


def test_checkpoint_size_matches_a_saved_training_state(tmp_path):
    from optimizers import build_optimizer
    from train_config import TrainConfig
    cfg = ModelConfig.from_preset("gpt2", n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=512)
    model = build_model(cfg)
    optimizer = build_optimizer(model, TrainConfig(), "cpu")
    model(torch.randint(0, 512, (2, 64)), torch.randint(0, 512, (2, 64)))[1].backward()
    optimizer.step()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1}, tmp_path / "s.pt")
    estimated = me.checkpoint_bytes(me.param_counts(model))
    assert estimated == pytest.approx((tmp_path / "s.pt").stat().st_size, rel=0.02)


def test_retention_counts_the_tiers():
    from train_config import TrainConfig
    t = TrainConfig(rolling_checkpoint_interval=100, keep_checkpoints=3, max_epochs=2)
    assert me.retention_files(t, max_iters=1000, epochs=2) == {"latest + backup": 2, "rolling": 3, "epoch": 2}
    assert me.retention_files(t, max_iters=150)["rolling"] == 1  # only one rolling file is ever written
    assert me.epochs_in_run(t, max_iters=1000, tokens_per_step=1000, train_tokens=100_000) == 2  # max_epochs


def oom_above(threshold, calls):
    def try_step(batch):
        calls.append(batch)
        if batch > threshold:
            raise torch.OutOfMemoryError(f"batch {batch}")
    return try_step


@pytest.mark.parametrize("threshold, start", [(37, 8), (37, 64), (8, 8), (1, 16), (100, 8)])
def test_find_max_batch_size(threshold, start):
    calls = []
    assert me.find_max_batch_size(oom_above(threshold, calls), start) == threshold
    assert len(calls) <= 2 * max(threshold, start).bit_length() + 2  # doubling or halving, then bisection


def test_find_max_batch_size_respects_limit_and_reports_no_fit():
    assert me.find_max_batch_size(oom_above(100, []), 8, limit=24) == 24
    with pytest.raises(torch.OutOfMemoryError):
        me.find_max_batch_size(oom_above(0, []), 4)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_materialize_equals_a_normal_build(preset):
    cfg = ModelConfig.from_preset(preset, n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=128)
    torch.manual_seed(3)
    expected = build_model(cfg)
    torch.manual_seed(3)
    built = me.materialize(cfg, "cpu")
    for (name, a), (_, b) in zip(expected.state_dict().items(), built.state_dict().items()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(expected.named_buffers(), built.named_buffers()):  # RoPE's cos/sin too
        assert torch.equal(a, b), name


def test_meta_model_has_no_storage():
    model = me.meta_model(ModelConfig.from_preset("llama"))
    assert all(p.is_meta for p in model.parameters()) and all(b.is_meta for b in model.buffers())


def config_with(model_cfg, **train_options):
    from train_config import Config, TrainConfig
    return Config(model=model_cfg, train=TrainConfig(**train_options))


TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)


def test_plan_memory_dry_run_prints_and_returns_the_config(capsys):
    from distributed import DistInfo
    config = config_with(ModelConfig.from_preset("gpt2", **TINY), dry_run=True, device="cpu")
    assert me.plan_memory(config, "cpu", "float32", DistInfo(), 1) is config
    assert "architecture 2L-2H-32D" in capsys.readouterr().out


def test_plan_memory_auto_batch_size_keeps_the_global_batch(capsys):
    from distributed import DistInfo
    config = config_with(ModelConfig.from_preset("gpt2", **TINY), auto_batch_size=True, batch_size=2,
                                     gradient_accumulation_steps=6, device="cpu", compile=False)
    planned = me.plan_memory(config, "cpu", "float32", DistInfo(), 6)
    # nothing runs out of memory on the CPU, so the whole per-rank batch becomes one micro-batch
    assert (planned.train.batch_size, planned.train.gradient_accumulation_steps) == (12, 1)
    assert "auto_batch_size: micro-batch 12 runs" in capsys.readouterr().out


def test_the_fused_loss_kernel_keeps_no_fp32_copies_of_the_chunk():
    """On CUDA (the Triton loss kernel) a chunk holds its logits and their gradient, 16-bit each; torch's
    path (CPU) adds the fp32 copy and logsumexp's two fp32 temporaries: 12 bytes per logit more."""
    cfg = ModelConfig.from_preset("gpt2")
    fused = me.logits_peak_bytes(cfg, 32768, 2, 32768, fused_kernel=True)
    assert fused - 2 * cfg.n_embd * 32768 - 4 * cfg.vocab_size * cfg.n_embd == 4 * cfg.vocab_size * 32768
    assert me.logits_peak_bytes(cfg, 32768, 2, 32768) - fused == 12 * cfg.vocab_size * 32768
    assert me.logits_peak_bytes(cfg, 32768, 2, 8192, fused_kernel=True) < fused  # chunks bound it


def test_auto_batch_size_probes_without_cuda_graphs(monkeypatch):
    """The probe runs two micro-steps, which CUDA graphs cannot (auto would take them on one GPU)."""
    import training_setup
    from distributed import DistInfo
    modes = []
    original = training_setup.build_step_parts

    def spy(config, device, dtype, dist):
        modes.append(config.train.compile_mode)
        return original(config, device, dtype, dist)

    monkeypatch.setattr(training_setup, "build_step_parts", spy)
    for mode in ("auto", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        config = config_with(ModelConfig.from_preset("gpt2", **TINY), auto_batch_size=True, batch_size=2,
                             device="cpu", compile=False, compile_mode=mode)
        planned = me.plan_memory(config, "cpu", "float32", DistInfo(), 1)
        assert planned.train.compile_mode == mode  # training keeps its own mode
    assert modes == ["default", "default", "default", "max-autotune-no-cudagraphs"]
