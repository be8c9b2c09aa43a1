"""Data parallelism on CPU: 2 processes with gloo through torchrun, a tiny model.

With the sequential loader the global batch holds the same windows whatever the world size
(rank r takes its share of each step), so 2 ranks x 4 sequences must give the losses of one
process x 8 sequences. They match to float rounding, not bit for bit: the gradient is summed
in a different order (per-rank sums, then an all-reduce).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, SHAKESPEARE_TXT
from data.shakespeare_char.prepare import prepare

STRATEGIES = {"ddp": [], "zero1": ["--use_zero1=True"], "fsdp": ["--use_fsdp=True"]}
# DIST_TEST_DEVICE=cuda runs the same checks with NCCL on a machine with 2 GPUs
DEVICE = os.environ.get("DIST_TEST_DEVICE", "cpu")
COMMON = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", f"--device={DEVICE}", "--compile=False",
          "--logger_backends=[]", "--eval_iters=2", "--eval_interval=1000", "--log_interval=1", "--warmup_iters=1",
          "--lr_decay_iters=10", "--data_loader=sequential", "--dropout=0.0", "--dtype=float32",
          "--dataset=shakespeare_char"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    if not SHAKESPEARE_TXT.is_file():
        pytest.skip("offline Tiny Shakespeare not available")
    root = tmp_path_factory.mktemp("dist")
    prepare(SHAKESPEARE_TXT, root / "data" / "shakespeare_char")
    return root


def launch(root, run_name, args, nproc, fault=None):
    """Runs train.py (under torchrun when nproc > 1); fault={"FAULT": ..., "FAULT_RANK": ...,
    "FAULT_STEP": ...} runs it through faulty_train.py, and then the run must fail."""
    paths = [f"--data_dir={root / 'data'}", f"--out_dir={root / 'runs'}", f"--checkpoint_dir={root / 'checkpoints'}"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 \
        else [sys.executable]
    script = REPO_ROOT / ("tests/faulty_train.py" if fault else "train.py")
    result = subprocess.run([*launcher, str(script), *COMMON, *paths, f"--run_name={run_name}", *args],
                            capture_output=True, text=True, cwd=root, timeout=300, env={**os.environ, **(fault or {})})
    failed_as_planned = bool(fault) == (result.returncode != 0)
    assert failed_as_planned, \
        f"{run_name} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def losses(root, run_name):
    lines = (root / "runs" / run_name / "metrics.jsonl").read_text().splitlines()
    return {e["step"]: e["loss"] for e in map(json.loads, lines) if e["kind"] == "train"}


@pytest.fixture(scope="module")
def trained(workspace):
    launch(workspace, "single", ["--batch_size=8", "--max_iters=5"], nproc=1)
    for name, flags in STRATEGIES.items():
        launch(workspace, name, ["--batch_size=4", "--max_iters=4", *flags], nproc=2)
    return workspace


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_two_ranks_match_one_process_with_the_same_global_batch(trained, strategy):
    single, parallel = losses(trained, "single"), losses(trained, strategy)
    assert sorted(parallel) == [1, 2, 3, 4]
    for step, loss in parallel.items():
        assert loss == pytest.approx(single[step], abs=1e-4), step


@pytest.mark.parametrize("saved_under", list(STRATEGIES))
@pytest.mark.parametrize("resumed_under", list(STRATEGIES) + ["single"])
def test_checkpoints_resume_under_every_strategy(trained, saved_under, resumed_under):
    if saved_under == resumed_under:
        pytest.skip("same strategy: covered by the exact-resume tests")
    run_name = f"{saved_under}-to-{resumed_under}"
    shutil.copytree(trained / "checkpoints" / saved_under, trained / "checkpoints" / run_name)
    flags = ["--batch_size=8"] if resumed_under == "single" else ["--batch_size=4", *STRATEGIES[resumed_under]]
    launch(trained, run_name, ["--resume=latest", "--max_iters=5", *flags], nproc=1 if resumed_under == "single" else 2)
    resumed = losses(trained, run_name)
    assert list(resumed) == [5]
    assert resumed[5] == pytest.approx(losses(trained, "single")[5], abs=1e-4)


def test_a_crashed_rank_stops_every_rank_and_the_run_resumes_on_two_or_one(trained):
    # rank 1 dies in step 3 without a word; rank 0 must stop (not hang) and say what happened
    result = launch(trained, "crash", ["--batch_size=4", "--max_iters=6", "--rolling_checkpoint_interval=1"], nproc=2,
                    fault={"FAULT": "crash", "FAULT_RANK": "1", "FAULT_STEP": "3"})
    assert "exitcode  : 3" in result.stderr  # torchrun's root cause: rank 1's own exit
    if DEVICE == "cpu":
        # gloo reports the broken connection to rank 0, which says so; under NCCL rank 0 stays inside
        # the collective's kernel until torchrun ends it (SIGTERM, then SIGKILL after 30 s)
        assert "Stopped: rank 0 lost contact with the other ranks" in result.stderr
    single = losses(trained, "single")
    for nproc, batch in ((2, 4), (1, 8)):
        run_name = f"crash-resumed-on-{nproc}"
        shutil.copytree(trained / "checkpoints" / "crash", trained / "checkpoints" / run_name)
        launch(trained, run_name, ["--resume=latest", "--max_iters=5", f"--batch_size={batch}"], nproc=nproc)
        resumed = losses(trained, run_name)
        assert list(resumed) == [3, 4, 5]  # latest.pt held step 2, the last step both ranks finished
        for step, loss in resumed.items():
            assert loss == pytest.approx(single[step], abs=1e-4), (nproc, step)


def test_a_nan_on_one_rank_stops_every_rank_with_the_reason(trained):
    result = launch(trained, "nan", ["--batch_size=4", "--max_iters=6"], nproc=2,
                    fault={"FAULT": "nan", "FAULT_RANK": "1", "FAULT_STEP": "2"})
    assert result.stderr.count("Stopped: the training loss became nan at step 1") == 2  # both ranks, same words
    assert "lost contact" not in result.stderr
