"""Compare training runs side by side: a table and plots from their runs/<name>/ logs.

    python compare_architectures.py                      # every run in runs/
    python compare_architectures.py --latest 3
    python compare_architectures.py --runs gpt2-a llama-b --out comparison --format svg

Writes to --out (default comparison/): comparison.md (the table, ready to paste into a report),
loss_vs_tokens, loss_vs_time (train and val loss, one line per run) and throughput (tokens/s and
MFU bars). Runs without summary.json (still going, or crashed) are read from metrics.jsonl and
marked; folders that are not runs are skipped with a note.

"val loss @ equal tokens" compares runs at the same amount of data: the largest token count every
compared run has reached, each run's val curve interpolated linearly there. Wall time is the
events' "time" field (seconds since the run started) where they have it, otherwise the sum of the
logged step times.
"""
import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training_logger import format_eta, read_metrics

FORMATS = ("png", "svg")
FINISHED, UNFINISHED = "finished", "running or crashed"
MEMORY_FIELDS = ("memory_peak_mib", "memory_peak_rss_mib")  # CUDA allocator peak, else process peak RSS


class NotARun(Exception):
    """Why a folder is left out of the comparison."""


@dataclass
class RunLog:
    name: str
    folder: Path
    record: dict  # config.json
    summary: dict | None  # summary.json, None while running or after a crash
    events: list = field(default_factory=list)

    def of_kind(self, kind):
        """The events of one kind, one per step in step order: a resumed run logs the steps after
        its checkpoint again, and the later record of a step wins."""
        by_step = {e["step"]: e for e in self.events if e.get("kind") == kind}
        return [by_step[step] for step in sorted(by_step)]


def read_run(folder):
    """A RunLog, or NotARun saying why the folder is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotARun("no such folder")
    config_path, metrics_path = folder / "config.json", folder / "metrics.jsonl"
    if not config_path.is_file() or not metrics_path.is_file():
        raise NotARun("not a run (no config.json and metrics.jsonl in it)")
    try:
        record = json.loads(config_path.read_text(encoding="utf-8"))
        summary_path = folder / "summary.json"
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
        events = read_metrics(folder)
    except ValueError as error:  # bad JSON, bad UTF-8, or a corrupt line before the last
        raise NotARun(f"unreadable: {error}") from None
    events = [e for e in events if isinstance(e, dict) and isinstance(e.get("step"), (int, float))]
    return RunLog(folder.name, folder, record if isinstance(record, dict) else {}, summary, events)


def select_runs(runs_dir, names=None, latest=None):
    """(RunLogs, notes): the named runs, the latest N by start time, or every run in runs_dir."""
    runs_dir = Path(runs_dir)
    folders = [runs_dir / name for name in names] if names else sorted(p for p in runs_dir.glob("*") if p.is_dir())
    runs, notes = read_runs(folders)
    if latest is not None:
        runs = sorted(runs, key=lambda run: (str(run.record.get("started", "")), run.name))[-latest:]
    return runs, notes


def read_runs(folders):
    runs, notes = [], []
    for folder in folders:
        try:
            runs.append(read_run(folder))
        except NotARun as reason:
            notes.append(f"skipped {folder}: {reason}")
    return runs, notes


# ---------------------------------------------------------------- numbers

def curve(run, kind, y_key):
    """(tokens, wall seconds, y) arrays of the events of one kind that have y_key."""
    events = [e for e in run.of_kind(kind) if e.get(y_key) is not None and e.get("tokens") is not None]
    return (np.array([e["tokens"] for e in events], dtype=float), event_times(run, events),
            np.array([e[y_key] for e in events], dtype=float))


def event_times(run, events):
    """Seconds since the start for each event: its "time" field, else the time of its step on the
    timeline of the train events (their "time", or their step_ms summed)."""
    timeline_steps, timeline_seconds, elapsed, previous_step = [0.0], [0.0], 0.0, 0
    for e in run.of_kind("train"):
        if e.get("time") is not None:
            elapsed = e["time"]
        elif e.get("step_ms") is not None:
            elapsed += e["step_ms"] / 1000 * (e["step"] - previous_step)  # step_ms: mean since the last log
        previous_step = e["step"]
        timeline_steps.append(e["step"])
        timeline_seconds.append(elapsed)
    return np.array([e["time"] if e.get("time") is not None else np.interp(e["step"], timeline_steps, timeline_seconds)
                     for e in events], dtype=float)


def equal_token_budget(runs):
    """The largest token count that every run's val curve reaches (None if a run has no val loss)."""
    reached = [curve(run, "eval", "val_loss")[0] for run in runs]
    return min(tokens.max() for tokens in reached) if reached and all(len(t) for t in reached) else None


def summarize(run, equal_tokens):
    """One table row of plain numbers (None where the run has no such number)."""
    tokens, seconds, val = curve(run, "eval", "val_loss")
    train = [e for e in run.of_kind("train") if e.get("loss") is not None]
    hellaswag = [e for e in run.of_kind("hellaswag") if e.get("acc_norm") is not None]
    summary = run.summary or {}
    best_val_loss = summary.get("best_val_loss")
    if best_val_loss is None and len(val):  # unfinished, or the summary's best was not finite
        best_val_loss = float(val.min())
    all_seconds = event_times(run, run.events)
    memory = [e[key] for e in run.of_kind("train") for key in MEMORY_FIELDS if e.get(key) is not None]
    return {
        "run": run.name,
        "arch": run.record.get("arch_name"),
        "preset": run.record.get("config", {}).get("model", {}).get("arch_preset"),
        "params": run.record.get("params"),
        "flops_per_token": (run.record.get("flops_per_token") or {}).get("total"),
        "best_val_loss": best_val_loss,
        "val_loss_equal_tokens": (float(np.interp(equal_tokens, tokens, val))
                                  if equal_tokens is not None and len(val) else None),
        "final_train_loss": train[-1]["loss"] if train else None,
        "tokens_per_sec": _median(e.get("tokens_per_sec") for e in run.of_kind("train")),
        "mfu": _median(e.get("mfu") for e in run.of_kind("train")),
        "peak_memory_mib": max(memory) if memory else None,
        "hellaswag_acc_norm": hellaswag[-1]["acc_norm"] if hellaswag else None,
        "wall_seconds": float(all_seconds.max()) if len(all_seconds) else None,
        "tokens": summary.get("tokens", max((e.get("tokens") or 0 for e in run.events), default=None)),
        "status": FINISHED if run.summary is not None else UNFINISHED,
    }


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------- table

COLUMNS = [  # (row key, header, format)
    ("run", "run", str), ("arch", "arch", str), ("preset", "preset", str),
    ("params", "params", lambda v: format_count(v, "kMBT")),
    ("flops_per_token", "FLOPs/token", lambda v: format_count(v, "kMGT")),
    ("best_val_loss", "best val loss", lambda v: f"{v:.4f}"),
    ("val_loss_equal_tokens", "val loss @ {equal} tokens", lambda v: f"{v:.4f}"),
    ("final_train_loss", "final train loss", lambda v: f"{v:.4f}"),
    ("tokens_per_sec", "tokens/s", lambda v: f"{v:,.0f}"),
    ("mfu", "MFU", lambda v: f"{100 * v:.1f}%"),
    ("peak_memory_mib", "peak memory", lambda v: f"{v / 1024:.2f} GiB" if v >= 1024 else f"{v:.0f} MiB"),
    ("hellaswag_acc_norm", "HellaSwag acc_norm", lambda v: f"{v:.4f}"),
    ("wall_seconds", "wall time", format_eta),
    ("tokens", "tokens", lambda v: format_count(v, "kMBT")),
    ("status", "status", str),
]

_FORMATS = {key: fmt for key, _, fmt in COLUMNS}


def markdown_table(rows, equal_tokens):
    equal = "n/a" if equal_tokens is None else format_count(equal_tokens, "kMBT")
    headers = [header.format(equal=equal) for _, header, _ in COLUMNS]
    cells = [[format_cell(row, key) for key, _, _ in COLUMNS] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def format_cell(row, key):
    return "n/a" if row[key] is None else _FORMATS[key](row[key])


def format_count(value, suffixes):
    """1234567 -> 1.23M: suffixes name thousands, millions, ... (kMBT for counts, kMGT for FLOPs)."""
    for power, suffix in reversed(list(enumerate(suffixes, start=1))):
        if abs(value) >= 1000 ** power:
            return f"{value / 1000 ** power:.2f}{suffix}"
    return f"{value:g}"


# ---------------------------------------------------------------- plots

def plot_losses(runs, x_axis, path):
    """Train and val loss against tokens (x_axis 0) or wall time (x_axis 1), one line per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, (kind, y_key, title) in zip(axes, (("train", "loss", "train loss"), ("eval", "val_loss", "val loss"))):
        for run in runs:
            points = curve(run, kind, y_key)
            marker = "" if run.summary is not None else " (unfinished)"
            ax.plot(points[x_axis], points[2], label=run.name + marker, marker="." if kind == "eval" else None)
        ax.set_title(title)
        ax.set_xlabel("tokens" if x_axis == 0 else "wall time (s)")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_throughput(rows, path):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    names = [row["run"] for row in rows]
    for ax, (key, title, scale) in zip(axes, (("tokens_per_sec", "tokens/s", 1), ("mfu", "MFU (%)", 100))):
        values = [scale * row[key] if row[key] is not None else 0.0 for row in rows]
        bars = ax.bar(range(len(rows)), values)
        ax.bar_label(bars, labels=[format_cell(row, key) for row in rows])
        ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize="small")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        sys.exit("compare_architectures.py needs matplotlib for its plots: pip install matplotlib")
    matplotlib.use("Agg")  # no display needed: files only
    import matplotlib.pyplot as plt
    return plt


# ---------------------------------------------------------------- entry points

def compare(runs, out_dir, fmt="png"):
    """Writes the table and plots for runs (RunLogs) into out_dir; returns (rows, written paths)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    equal_tokens = equal_token_budget(runs)
    rows = [summarize(run, equal_tokens) for run in runs]
    table = markdown_table(rows, equal_tokens)
    paths = {"table": out_dir / "comparison.md", "loss_vs_tokens": out_dir / f"loss_vs_tokens.{fmt}",
             "loss_vs_time": out_dir / f"loss_vs_time.{fmt}", "throughput": out_dir / f"throughput.{fmt}"}
    paths["table"].write_text(table, encoding="utf-8")
    plot_losses(runs, 0, paths["loss_vs_tokens"])
    plot_losses(runs, 1, paths["loss_vs_time"])
    plot_throughput(rows, paths["throughput"])
    print(table)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return rows, paths


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--latest", type=int, metavar="N", help="the N most recently started runs")
    which.add_argument("--runs", nargs="+", metavar="NAME", help="these runs (folder names in --runs_dir)")
    parser.add_argument("--runs_dir", default="runs")
    parser.add_argument("--out", default="comparison", help="folder for the table and plots")
    parser.add_argument("--format", default="png", choices=FORMATS, help="plot file format")
    args = parser.parse_args(argv)
    if args.latest is not None and args.latest < 1:
        parser.error(f"--latest {args.latest}: give a number of runs of at least 1")
    return args


def main(argv):
    args = parse_args(argv)
    runs, notes = select_runs(args.runs_dir, args.runs, args.latest)
    for note in notes:
        print(note)
    if not runs:
        sys.exit(f"No runs to compare in {args.runs_dir}/ (a run folder holds config.json and metrics.jsonl, "
                 "written by train.py).")
    compare(runs, args.out, args.format)


if __name__ == "__main__":
    main(sys.argv[1:])
