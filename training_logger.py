"""A run's logs in runs/<run_name>/: config.json, metrics.jsonl (one JSON event per line,
flushed as written, so a crash loses nothing), summary.json at the end, and TensorBoard events.
"""
import json
import math
import os
import subprocess
from pathlib import Path


class TrainingLogger:
    def __init__(self, run_dir, run_config, use_tensorboard=True, enabled=True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._writer = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.run_dir / "config.json", run_config)
        self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")  # a resumed run appends
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._writer = SummaryWriter(log_dir=str(self.run_dir))
            except ImportError:
                print("WARNING: tensorboard is not installed; logging to metrics.jsonl only "
                      "(pip install tensorboard, or set use_tensorboard=False).")

    def log(self, event):
        """event: a dict with "kind" (train, eval, ...) and "step"; numbers also go to TensorBoard."""
        if not self.enabled:
            return
        event = {key: _plain(value) for key, value in event.items()}
        self._metrics.write(json.dumps(event) + "\n")
        self._metrics.flush()
        if self._writer:
            for key, value in event.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and value is not None:
                    self._writer.add_scalar(f"{event['kind']}/{key}", value, global_step=event["step"])

    def finish(self, summary):
        if not self.enabled:
            return
        write_json_atomically(self.run_dir / "summary.json", {key: _plain(v) for key, v in summary.items()})
        self.close()

    def close(self):
        if self.enabled and not self._metrics.closed:
            self._metrics.close()
        if self._writer:
            self._writer.close()
            self._writer = None


def _plain(value):
    """JSON-ready: tensors and numpy scalars to Python numbers, NaN and infinities to null."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def write_json_atomically(path, obj):
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(json.dumps({k: _plain(v) for k, v in obj.items()}, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_metrics(run_dir):
    """The events of a run; a truncated last line (a crash mid-write) is skipped."""
    events = []
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def format_console_line(event):
    parts = [f"step {event['step']}"]
    if event.get("loss") is not None:
        parts.append(f"loss {event['loss']:.4f}")
    if event.get("lr") is not None:
        parts.append(f"lr {event['lr']:.2e}")
    if event.get("grad_norm") is not None:
        parts.append(f"grad_norm {event['grad_norm']:.2f}")
    if event.get("step_ms") is not None:
        parts.append(f"{event['step_ms']:.1f} ms/step")
    if event.get("tokens_per_sec") is not None:
        parts.append(f"{event['tokens_per_sec']:,.0f} tok/s")
    if "mfu" in event:
        parts.append("MFU n/a" if event["mfu"] is None else f"MFU {100 * event['mfu']:.1f}%")
    memory = event.get("memory_peak_mib") or event.get("memory_peak_rss_mib")
    if memory is not None:
        parts.append(f"mem {memory / 1024:.2f} GiB")
    if event.get("eta_seconds") is not None:
        parts.append(f"ETA {format_eta(event['eta_seconds'])}")
    return " | ".join(parts)


def format_eta(seconds):
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def git_commit():
    """Short hash of this checkout, '+dirty' with uncommitted changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
