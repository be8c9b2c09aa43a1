"""train.py end to end, as a user runs it: tiny models on Tiny Shakespeare, on the CPU."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from checkpointing import load_checkpoint
from conftest import REPO_ROOT, SHAKESPEARE_TXT
from data.shakespeare_char.prepare import prepare

TINY_RUN = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--device=cpu",
            "--compile=False", "--logger_backends=[]", "--eval_iters=4", "--log_interval=1", "--warmup_iters=2"]



def train(tmp_path, data_root, *args, check=True, dataset="shakespeare_char", env=None):
    command = [sys.executable, str(REPO_ROOT / "train.py"), f"--data_dir={data_root}", f"--dataset={dataset}",
               f"--out_dir={tmp_path / 'runs'}", f"--checkpoint_dir={tmp_path / 'checkpoints'}", *TINY_RUN, *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def events(tmp_path, run_name, kind):
    lines = (tmp_path / "runs" / run_name / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def test_tiny_char_run_learns_and_logs_everything(tmp_path, char_data):
    start = time.time()
    train(tmp_path, char_data, "--run_name=learn", "--max_iters=150", "--eval_interval=75", "--learning_rate=3e-3",
          "--eval_iters=10", "--batch_size=16")
    assert time.time() - start < 60
    evals = events(tmp_path, "learn", "eval")
    assert [e["step"] for e in evals] == [0, 75, 150]
    assert evals[0]["val_loss"] > 4.0 and evals[-1]["val_loss"] < 0.75 * evals[0]["val_loss"]
    train_events = events(tmp_path, "learn", "train")
    for field in ("step", "tokens", "loss", "lr", "grad_norm", "step_ms", "tokens_per_sec", "mfu", "eta_seconds"):
        assert field in train_events[-1], field
    assert train_events[-1]["mfu"] is None  # CPU: no peak FLOPS, so no made-up MFU
    assert train_events[-1]["tokens"] == 150 * 16 * 32
    record = json.loads((tmp_path / "runs" / "learn" / "config.json").read_text())
    assert record["arch_name"].startswith("2L-2H-32D") and record["flops_per_token"]["total"] > 0
    assert record["config"]["model"]["vocab_size"] == 128  # 65 characters padded to a multiple of 64
    summary = json.loads((tmp_path / "runs" / "learn" / "summary.json").read_text())
    assert summary["steps"] == 150 and summary["best_val_loss"] == min(e["val_loss"] for e in evals)


def test_bpe_dataset_trains_with_the_gpt2_tokenizer(tmp_path):
    if not SHAKESPEARE_TXT.is_file() or "TIKTOKEN_CACHE_DIR" not in os.environ:
        pytest.skip("needs Tiny Shakespeare and the GPT-2 BPE cache")
    prepare(SHAKESPEARE_TXT, tmp_path / "data" / "shakespeare", tokenizer="gpt2")
    train(tmp_path, tmp_path / "data", "--run_name=bpe", "--max_iters=3", "--eval_interval=3",
          "--arch_preset=llama", dataset="shakespeare")
    record = json.loads((tmp_path / "runs" / "bpe" / "config.json").read_text())
    assert record["config"]["model"]["vocab_size"] == 50304
    sample = subprocess.run([sys.executable, str(REPO_ROOT / "sample.py"), "--run=bpe", "--start=ROMEO:",
                             "--num_samples=1", "--max_new_tokens=5", "--device=cpu",
                             f"--checkpoints_dir={tmp_path / 'checkpoints'}"], capture_output=True, text=True)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("ROMEO:")


def test_bf16_run_samples_text_under_its_autocast(tmp_path, char_data):
    """With bf16 training the residual stream is bf16 (residual_dtype=auto), so generation must run
    under the step's autocast too (it ran without, and failed, on the first sample)."""
    result = train(tmp_path, char_data, "--run_name=bf16", "--max_iters=2", "--eval_interval=2", "--dtype=bfloat16",
                   "--sample_interval=2", "--sample_max_new_tokens=8", "--sample_prompt=ROMEO:")
    assert "step: torch.compile off; loss: fused with the LM head in chunks of 32768 tokens" in result.stdout
    samples = events(tmp_path, "bf16", "text")
    assert [e["step"] for e in samples] == [2] and samples[0]["text"].startswith("ROMEO:")
    record = json.loads((tmp_path / "runs" / "bf16" / "config.json").read_text())
    assert (record["compile_mode"], record["fp8_lm_head"]) == (None, False)
    assert record["optimizer_class"] == "torch.optim.adamw.AdamW" and "optimizer torch.optim.adamw.AdamW" in result.stdout


def test_configuration_errors_exit_2_without_traceback(tmp_path, char_data):
    result = train(tmp_path, char_data, "--normalisation=rmsnorm", check=False)
    assert result.returncode == 2 and "Did you mean 'normalization'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_names_the_prepare_command(tmp_path):
    result = train(tmp_path, tmp_path / "data", check=False)
    assert result.returncode == 2 and "python data/shakespeare_char/prepare.py" in result.stderr
    assert "Traceback" not in result.stderr


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("loader", ["random", "sequential"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, char_data, loader):
    common = [f"--data_loader={loader}", "--dropout=0.1", "--lr_decay_iters=12", "--eval_interval=4",
              "--checkpoint_interval=3", "--batch_size=4"]
    train(tmp_path, char_data, "--run_name=straight", "--max_iters=12", *common)
    train(tmp_path, char_data, "--run_name=split", "--max_iters=6", *common)
    train(tmp_path, char_data, "--run_name=split", "--max_iters=12", "--resume=latest", *common)
    straight, split = (_weights(tmp_path / "checkpoints" / n / "latest.pt") for n in ("straight", "split"))
    assert straight.keys() == split.keys()
    assert all(torch.equal(straight[k], split[k]) for k in straight)
    losses = lambda name: {e["step"]: e["loss"] for e in events(tmp_path, name, "train")}
    assert losses("straight") == losses("split") and len(losses("straight")) == 12


def test_resume_switches_activation_checkpointing_with_pruning_state_intact(tmp_path, char_data):
    # the checkpoint wrapper renames parameters; optimizer state and masks are saved under plain names
    common = ["--batch_size=4", "--eval_interval=100", "--pruning_method=magnitude", "--target_sparsity=0.5",
              "--pruning_warmup=0", "--pruning_ramp_end=4", "--pruning_frequency=2", "--lr_decay_iters=8"]
    train(tmp_path, char_data, "--run_name=ac", "--max_iters=4", "--activation_checkpointing=full", *common)
    train(tmp_path, char_data, "--run_name=ac", "--max_iters=6", "--resume=latest", "--activation_checkpointing=none",
          *common)
    state = load_checkpoint(tmp_path / "checkpoints" / "ac" / "latest.pt")
    assert not any("_checkpoint_wrapped_module" in name for name in state["optimizer"]["state"])
    pruned = [w for name, w in state["model"].items() if name.startswith("blocks.") and w.dim() == 2]
    zeros = sum((w == 0).sum().item() for w in pruned) / sum(w.numel() for w in pruned)
    assert zeros == pytest.approx(0.5, abs=0.01)  # the target, reached at step 4 and kept after the resume


def test_logged_step_time_leaves_evaluation_out(tmp_path, char_data):
    # an evaluation of 2 x 40 batches between steps 8 and 9 costs many steps' time; step 9's line must not show it
    train(tmp_path, char_data, "--run_name=timing", "--max_iters=12", "--eval_interval=8", "--eval_iters=40",
          "--batch_size=4", "--sample_interval=0")
    step_ms = {e["step"]: e["step_ms"] for e in events(tmp_path, "timing", "train")}
    typical = sorted(step_ms.values())[len(step_ms) // 2]
    assert step_ms[9] < 5 * typical, step_ms


WAIT_FOR_THE_GPU = """
import dataclasses, runpy, sys, time
import train_step

class SlowNorm:  # a GPU's grad_norm.item() waits for the step's backward and update
    def __init__(self, norm):
        self.norm = norm

    def item(self):
        time.sleep(0.2)
        return self.norm.item()

real_step = train_step.train_step

def slow_step(*args, **kwargs):
    result = real_step(*args, **kwargs)
    return dataclasses.replace(result, grad_norm=SlowNorm(result.grad_norm))

train_step.train_step = slow_step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_logged_step_time_includes_the_wait_for_the_whole_step(tmp_path, char_data):
    """On a GPU the step's backward and update run on after the loss check (which waits for the forward
    alone); a log line's step time must still cover them. Here reading the gradient norm (a full wait on
    a GPU) takes 200 ms."""
    (tmp_path / "slow_gpu.py").write_text(WAIT_FOR_THE_GPU)
    command = [sys.executable, str(tmp_path / "slow_gpu.py"), str(REPO_ROOT / "train.py"), f"--data_dir={char_data}",
               "--dataset=shakespeare_char", f"--out_dir={tmp_path / 'runs'}",
               f"--checkpoint_dir={tmp_path / 'checkpoints'}", *TINY_RUN, "--run_name=wait", "--max_iters=4",
               "--eval_interval=100", "--sample_interval=0"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    assert all(e["step_ms"] >= 200 for e in events(tmp_path, "wait", "train")), events(tmp_path, "wait", "train")


def test_sigterm_saves_latest_and_resume_continues_at_the_next_step(tmp_path, char_data):
    command = [sys.executable, str(REPO_ROOT / "train.py"), f"--data_dir={char_data}", "--dataset=shakespeare_char",
               f"--out_dir={tmp_path / 'runs'}", f"--checkpoint_dir={tmp_path / 'checkpoints'}", *TINY_RUN,
               "--run_name=term", "--max_iters=100000", "--eval_interval=100000", "--checkpoint_interval=0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    for line in process.stdout:
        if line.startswith("step 5 "):
            process.send_signal(signal.SIGTERM)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "resume with:" in out and "--resume=latest --run_name=term" in out
    saved = load_checkpoint(tmp_path / "checkpoints" / "term" / "latest.pt")
    stopped_at = saved["progress"]["step"]
    assert stopped_at >= 5
    train(tmp_path, char_data, "--run_name=term", "--resume=latest", f"--max_iters={stopped_at + 2}")
    steps = [e["step"] for e in events(tmp_path, "term", "train")]
    assert steps[-2:] == [stopped_at + 1, stopped_at + 2] and steps.count(stopped_at + 1) == 1


def test_epochs_and_every_checkpoint_tier_load_with_weights_only(tmp_path):
    if not SHAKESPEARE_TXT.is_file():
        pytest.skip("offline Tiny Shakespeare not available")
    excerpt = tmp_path / "excerpt.txt"
    excerpt.write_text(SHAKESPEARE_TXT.read_text()[:20_000])
    prepare(excerpt, tmp_path / "data" / "excerpt")  # 18,000 training characters: 8 steps an epoch below
    train(tmp_path, tmp_path / "data", "--run_name=tiers", "--max_iters=100", "--eval_interval=2",
          "--checkpoint_interval=2", "--rolling_checkpoint_interval=2", "--keep_checkpoints=2",
          "--data_loader=sequential", "--batch_size=64", "--max_epochs=2", dataset="excerpt")
    folder = tmp_path / "checkpoints" / "tiers"
    names = sorted(p.name for p in folder.glob("*.pt"))
    assert {"latest.pt", "latest_backup.pt", "best_model.pt", "epoch_00001.pt", "epoch_00002.pt"} <= set(names)
    assert [n for n in names if n.startswith("rolling_step_")] == ["rolling_step_000014.pt", "rolling_step_000016.pt"]
    assert load_checkpoint(folder / "epoch_00001.pt")["progress"]["step"] == 8
    assert load_checkpoint(folder / "latest.pt")["progress"]["step"] == 16
    for path in folder.glob("*.pt"):
        torch.load(path, weights_only=True)
    listing = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--list_checkpoints", "--run_name=tiers",
                              f"--checkpoint_dir={tmp_path / 'checkpoints'}"], capture_output=True, text=True)
    assert listing.returncode == 0 and "latest.pt" in listing.stdout and "rolling_step_" in listing.stdout
