import errno
import io
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpointing
from checkpointing import (BACKUP, BEST, LATEST, CheckpointError, CheckpointManager, atomic_save, clean_state_dict,
                           load_checkpoint, load_for_resume, resume_candidates, rng_state, set_rng_state)
from conftest import REPO_ROOT


def state(step):
    return {"step": step, "weights": torch.full((4,), float(step)), "name": f"s{step}"}


def test_atomic_save_round_trips_with_weights_only(tmp_path):
    atomic_save(state(3), tmp_path / "a.pt")
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert loaded["step"] == 3 and torch.equal(loaded["weights"], torch.full((4,), 3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary file left behind


def test_latest_keeps_previous_as_backup(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save_latest(state(1))
    manager.save_latest(state(2))
    assert load_checkpoint(tmp_path / LATEST)["step"] == 2
    assert load_checkpoint(tmp_path / BACKUP)["step"] == 1


def test_rolling_retention_keeps_exactly_the_newest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_checkpoints=3)
    for step in range(100, 800, 100):
        manager.save_rolling(state(step), step)
        manager.save_epoch(state(step), step // 100)
    assert [p.name for p in manager.rolling_files()] == [
        "rolling_step_000500.pt", "rolling_step_000600.pt", "rolling_step_000700.pt"]
    assert len(list(tmp_path.glob("epoch_*.pt"))) == 7  # epoch files are never deleted


def test_retention_of_zero_still_keeps_the_file_just_written(tmp_path):
    manager = CheckpointManager(tmp_path, keep_checkpoints=0)
    manager.save_rolling(state(1), 1)
    manager.save_rolling(state(2), 2)
    assert [p.name for p in manager.rolling_files()] == ["rolling_step_000002.pt"]


def test_failed_write_keeps_previous_files_and_reports(tmp_path, monkeypatch, capsys):
    manager = CheckpointManager(tmp_path)
    manager.save_latest(state(1))
    manager.save_latest(state(2))

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    assert manager.save_latest(state(3)) is None
    assert "No space left on device" in capsys.readouterr().out
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / LATEST)["step"] == 2 and load_checkpoint(tmp_path / BACKUP)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([BACKUP, LATEST])
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="previous checkpoint files are unchanged"):
        CheckpointManager(tmp_path, on_error="stop").save_latest(state(3))



def test_a_full_disk_under_the_real_torch_save_is_reported_not_raised(tmp_path, monkeypatch, capsys):
    """torch.save's zip writer swallows the file's OSError(ENOSPC) and raises RuntimeError
    ("unexpected pos ...", seen on a full disk on a GPU machine); the run must still go on."""
    import checkpointing
    manager = CheckpointManager(tmp_path)
    manager.save_latest(state(1))

    class FillsUp(io.FileIO):
        room = 4096

        def write(self, data):
            if len(memoryview(data)) > FillsUp.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            FillsUp.room -= len(memoryview(data))
            return super().write(data)

    monkeypatch.setattr(checkpointing, "open", lambda path, mode: FillsUp(path, mode), raising=False)
    assert manager.save_latest({"step": 2, "w": torch.ones(100_000)}) is None
    assert "the disk may be full" in capsys.readouterr().out
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / LATEST)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]

SLOW_WRITER = """
import sys, time, torch
sys.path.insert(0, {repo!r})
from checkpointing import CheckpointManager
manager = CheckpointManager({folder!r})
manager.save_latest({{"step": 1, "w": torch.ones(3)}})
real_save = torch.save
def slow_save(obj, f, *a, **k):
    f.write(b"x" * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
torch.save = slow_save
manager.save_latest({{"step": 2, "w": torch.ones(3)}})
"""


def test_kill_9_during_a_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    code = SLOW_WRITER.format(repo=str(REPO_ROOT), folder=str(tmp_path))
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    path, checkpoint, _ = load_for_resume(resume_candidates(tmp_path, "latest"))
    assert path.name == LATEST and checkpoint["step"] == 1
    CheckpointManager(tmp_path)  # a new run in the folder clears the killed writer's partial file
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]


def test_truncated_latest_falls_back_to_backup_then_rolling(tmp_path, capsys):
    manager = CheckpointManager(tmp_path)
    manager.save_rolling(state(5), 5)
    manager.save_rolling(state(7), 7)
    manager.save_latest(state(8))
    manager.save_latest(state(9))
    data = (tmp_path / LATEST).read_bytes()
    (tmp_path / LATEST).write_bytes(data[: len(data) // 2])
    path, checkpoint, tried = load_for_resume(resume_candidates(tmp_path, "latest"))
    assert path.name == BACKUP and checkpoint["step"] == 8
    assert "latest.pt is unreadable" in capsys.readouterr().out
    (tmp_path / BACKUP).unlink()
    path, checkpoint, tried = load_for_resume(resume_candidates(tmp_path, "latest"))
    assert path.name == "rolling_step_000007.pt" and checkpoint["step"] == 7
    assert any("latest_backup.pt (missing)" in t for t in tried)


def test_nothing_loadable_names_every_file_tried(tmp_path):
    (tmp_path / LATEST).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"latest.pt \(unreadable.*latest_backup.pt \(missing\)"):
        load_for_resume(resume_candidates(tmp_path, "latest"))
    assert resume_candidates(tmp_path, "best") == [tmp_path / BEST]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    atomic_save({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_clean_state_dict_strips_wrapper_prefixes():
    sd = {"_orig_mod.wte.weight": 1, "module._orig_mod.blocks.0.attn.qkv_proj.weight": 2,
          "blocks.1._checkpoint_wrapped_module.ffn.up_proj.weight": 3}
    assert clean_state_dict(sd) == {"wte.weight": 1, "blocks.0.attn.qkv_proj.weight": 2,
                                    "blocks.1.ffn.up_proj.weight": 3}


def test_describe_checkpoints_lists_each_file(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save_latest({"step": 4, "epoch": 1, "tokens": 4096, "best_val_loss": 2.5})
    (tmp_path / "rolling_step_000002.pt").write_bytes(b"broken")
    rows = checkpointing.describe_checkpoints(tmp_path)
    assert rows[0][:5] == ("file", "step", "epoch", "tokens", "val_loss")
    assert ("latest.pt", "4", "1", "4,096", "2.5000") == rows[1][:5]
    assert rows[2][0] == "rolling_step_000002.pt" and rows[2][4].startswith("unreadable")


def test_checkpoint_clock_by_steps_and_minutes(monkeypatch):
    clock = checkpointing.CheckpointClock(checkpoint_interval=10, rolling_interval=25, checkpoint_minutes=1)
    assert clock.latest_due(10) and not clock.latest_due(11)
    assert clock.rolling_due(50) and not clock.rolling_due(10)
    now = time.monotonic()
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: now + 61)
    assert clock.latest_due(11)
    clock.mark_latest_written()
    assert not clock.latest_due(11)
