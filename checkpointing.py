"""Checkpoints: what is saved, where, how it is written safely, and how a run resumes.

Tiers in checkpoints/<run>/ (see README "Checkpoints"):
  latest.pt (+ latest_backup.pt, the one before)  every checkpoint_interval steps / checkpoint_minutes
  rolling_step_XXXXXX.pt                          every rolling_checkpoint_interval steps, newest keep_checkpoints kept
  epoch_XXXXX.pt                                  at every epoch boundary, never deleted automatically
  best_model.pt                                   model weights + config whenever val loss improves

Files hold only tensors, numbers, strings, lists and dicts, so they load with
torch.load(weights_only=True) and opening one cannot run code. Every write goes to a temporary
file in the same folder, is fsynced and renamed into place, so a crash or kill -9 at any moment
leaves the previous file intact.
"""
import os
import random
import re
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

FORMAT_VERSION = 1
LATEST, BACKUP, BEST = "latest.pt", "latest_backup.pt", "best_model.pt"
ROLLING_PATTERN = re.compile(r"rolling_step_(\d+)\.pt$")
# name components that torch.compile, DDP and activation checkpointing insert into parameter names
_WRAPPER_COMPONENTS = {"_orig_mod", "module", "_checkpoint_wrapped_module"}


class CheckpointError(RuntimeError):
    pass


def clean_name(name):
    """A parameter's name as the plain model has it, whatever wraps the model or its blocks
    (torch.compile, DDP, activation checkpointing)."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_COMPONENTS)


def clean_state_dict(state_dict):
    return {clean_name(name): tensor for name, tensor in state_dict.items()}


# ---------------------------------------------------------------- writing and reading files

def atomic_save(obj, path):
    """Write to a temporary file in the same folder, fsync, then rename over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as error:  # torch's zip writer turns a failed write (disk full) into this
                raise OSError(f"torch.save failed, the disk may be full ({error})") from error
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder):
    # the rename is durable only once the directory entry is on disk
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path, map_location="cpu", mmap=False):
    """mmap: tensors stay on disk until touched (for reading a checkpoint's small fields)."""
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


# ---------------------------------------------------------------- random number generators

def rng_state():
    """Python, NumPy, torch CPU and every CUDA device's RNG state, as weights_only-safe values."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- the tiers

class CheckpointManager:
    """Writes the tiers of one run's folder and keeps rolling retention."""

    def __init__(self, folder, keep_checkpoints=10, on_error="continue"):
        self.folder = Path(folder)
        self.keep_checkpoints = keep_checkpoints
        self.on_error = on_error
        self._remove_partial_writes()

    def _remove_partial_writes(self):
        # temporary files of a writer that was killed; they were never renamed, so nothing refers to them
        for partial in [*self.folder.glob(".*.tmp-*"), *self.folder.glob(".*.pt.new")]:
            partial.unlink(missing_ok=True)

    def save_latest(self, state):
        """latest.pt, keeping the previous one as latest_backup.pt. The new file is complete on
        disk before the old one moves, so at every moment one of the two is valid."""
        return self._write(state, LATEST, keep_backup=True)

    def save_rolling(self, state, step):
        written = self._write(state, f"rolling_step_{step:06d}.pt")
        if written:
            self._prune_rolling(keep=written)
        return written

    def save_epoch(self, state, epoch):
        return self._write(state, f"epoch_{epoch:05d}.pt")

    def save_best(self, model_state):
        return self._write(model_state, BEST)

    def rolling_files(self):
        files = [p for p in self.folder.glob("rolling_step_*.pt") if ROLLING_PATTERN.search(p.name)]
        return sorted(files, key=lambda p: int(ROLLING_PATTERN.search(p.name).group(1)))

    def _write(self, state, name, keep_backup=False):
        path = self.folder / name
        staged = self.folder / f".{name}.new" if keep_backup else path
        try:
            atomic_save(state, staged)
            if keep_backup:
                if path.exists():
                    os.replace(path, self.folder / BACKUP)
                os.replace(staged, path)
                _fsync_dir(self.folder)
            return path
        except OSError as error:
            if keep_backup:
                staged.unlink(missing_ok=True)
            message = (f"could not write checkpoint {path}: {error.strerror or error}. The previous checkpoint "
                       f"files are unchanged. Free disk space or change checkpoint_dir.")
            if self.on_error == "stop":
                raise CheckpointError(message) from error
            print(f"WARNING: {message} Training goes on (on_checkpoint_error='continue').")
            return None

    def _prune_rolling(self, keep):
        """Deletes the oldest rolling files beyond keep_checkpoints, never the one just written."""
        files = self.rolling_files()
        excess = len(files) - max(self.keep_checkpoints, 1)
        for old in [p for p in files if p != keep][:max(0, excess)]:
            old.unlink(missing_ok=True)


# ---------------------------------------------------------------- resuming

def resume_candidates(folder, which):
    """Files to try, in order: latest -> latest_backup -> newest rolling; best -> best_model."""
    folder = Path(folder)
    if which == "best":
        return [folder / BEST]
    rolling = CheckpointManager(folder).rolling_files()
    return [folder / LATEST, folder / BACKUP] + rolling[::-1]


def load_for_resume(candidates):
    """The first candidate that loads, naming each file that could not be used."""
    tried = []
    for path in candidates:
        if not path.is_file():
            tried.append(f"{path} (missing)")
            continue
        try:
            checkpoint = load_checkpoint(path)
        except Exception as error:  # truncated or corrupt files raise many kinds of errors
            tried.append(f"{path} (unreadable: {type(error).__name__})")
            print(f"WARNING: {path} is unreadable ({type(error).__name__}: {error}); trying the next checkpoint.")
            continue
        return path, checkpoint, tried
    raise CheckpointError("no checkpoint could be loaded. Tried: " + "; ".join(tried) + ".")


# ---------------------------------------------------------------- listing

def describe_checkpoints(folder):
    """Rows (file, step, epoch, tokens, val loss, size, time) for every checkpoint in a run folder."""
    rows = [("file", "step", "epoch", "tokens", "val_loss", "size", "written")]
    for path in sorted(Path(folder).glob("*.pt")):
        size = f"{path.stat().st_size / 2**20:.1f} MiB"
        written = datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        try:
            ckpt = load_checkpoint(path, mmap=True)
        except Exception as error:
            rows.append((path.name, "?", "?", "?", f"unreadable ({type(error).__name__})", size, written))
            continue
        val = ckpt.get("best_val_loss", ckpt.get("val_loss"))
        rows.append((path.name, str(ckpt.get("step", "?")), str(ckpt.get("epoch", "-")),
                     f"{ckpt['tokens']:,}" if "tokens" in ckpt else "-",
                     f"{val:.4f}" if isinstance(val, float) else "-", size, written))
    return rows


class CheckpointClock:
    """Decides when each tier is due, by step count and optionally by wall-clock minutes."""

    def __init__(self, checkpoint_interval, rolling_interval, checkpoint_minutes=None):
        self.checkpoint_interval = checkpoint_interval
        self.rolling_interval = rolling_interval
        self.checkpoint_seconds = checkpoint_minutes * 60 if checkpoint_minutes else None
        self.last_latest = time.monotonic()

    def latest_due(self, step):
        by_time = self.checkpoint_seconds is not None and time.monotonic() - self.last_latest >= self.checkpoint_seconds
        return by_time or (self.checkpoint_interval > 0 and step % self.checkpoint_interval == 0)

    def rolling_due(self, step):
        return self.rolling_interval > 0 and step % self.rolling_interval == 0

    def mark_latest_written(self):
        self.last_latest = time.monotonic()
