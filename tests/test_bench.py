"""bench.py on the CPU: the real training step, timed, with the loop's pruning and accumulation."""
import json

import pytest

import bench

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--vocab_size=128", "--batch_size=4",
        "--device=cpu", "--compile=False"]


def run_bench(tmp_path, *options):
    bench.main([*TINY, "--steps=4", "--warmup=2", f"--out={tmp_path}", *options])
    return [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]


def test_cpu_run_reports_speed_and_says_mfu_is_unknown(tmp_path, capsys):
    [result] = run_bench(tmp_path)
    assert result["tokens_per_sec"] > 0 and result["ms_per_step"] > 0 and result["mfu"] is None
    assert result["params"] > 0 and result["sparsity"] is None and result["peak_memory_gib"] is None
    assert "MFU    n/a" in capsys.readouterr().out


def test_total_batch_size_sets_the_accumulation_as_train_py_does(tmp_path):
    [plain, accumulated] = run_bench(tmp_path, "--sweep", "total_batch_size=128,512")  # 4 x 32 tokens a micro-step
    tokens_per_step = [r["tokens_per_sec"] * r["ms_per_step"] / 1000 for r in (plain, accumulated)]
    assert tokens_per_step == pytest.approx([128, 512])


def test_timed_steps_run_with_the_pruning_masks_applied(tmp_path):
    [result] = run_bench(tmp_path, "--optimizer=adamwprune", "--target_sparsity=0.5", "--pruning_warmup=0",
                         "--pruning_ramp_end=2", "--pruning_frequency=1")
    assert result["sparsity"] == pytest.approx(0.5, abs=0.01)
