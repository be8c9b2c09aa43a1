"""A run's logs, in its run folder:

    config.json     the run's configuration, written when the run starts
    metrics.jsonl   one JSON event per line ("kind": train, eval, text, ...; "step"), flushed as
                    written so a crash loses nothing; a resumed run appends to it
    summary.json    written when the run finishes
    events.out.*    TensorBoard: every numeric field of an event as <kind>/<field>
    wandb/          Weights & Biases' local files, when "wandb" is among the backends

metrics.jsonl is always written; logger_backends adds tensorboard, wandb and trackio, each of
which gets the same scalars (<kind>/<field>); tensorboard and wandb also get text samples. Only standard JSON is written:
tensors and numpy numbers become Python numbers, NaN and infinities become null.
"""
import importlib.util
import json
import math
import os
import re
import subprocess
from pathlib import Path

LOGGER_BACKENDS = ("tensorboard", "wandb", "trackio")  # each one's package has its name


def missing_backend_packages(backends) -> list[str]:
    """The packages of the chosen backends that are not installed (tensorboard only warns: it is
    the default, and a run without it still has metrics.jsonl)."""
    return [name for name in backends if name != "tensorboard" and importlib.util.find_spec(name) is None]


class TrainingLogger:
    """Logs one run. With enabled=False (ranks other than 0) it creates nothing and does nothing."""

    def __init__(self, run_dir, run_config: dict, backends=("tensorboard",), enabled: bool = True,
                 project: str = "gpt-workbench"):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._metrics = None
        self._backends = []
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.run_dir / "config.json", run_config)
        self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        opened = (_BACKEND_CLASSES[name].open(self.run_dir, run_config, project) for name in backends)
        self._backends = [backend for backend in opened if backend is not None]

    def log(self, event: dict):
        if not self.enabled:
            return
        missing = {"kind", "step"} - event.keys()
        if missing:
            raise ValueError(f"a logged event needs 'kind' and 'step'; missing {sorted(missing)} in {event}")
        event = json_ready(event)
        self._metrics.write(json.dumps(event, allow_nan=False, default=str) + "\n")
        self._metrics.flush()
        scalars = {f"{event['kind']}/{key}": value for key, value in event.items()
                   if key != "step" and _is_number(value)}
        if scalars:
            for backend in self._backends:
                backend.scalars(scalars, event["step"])

    def log_text(self, tag: str, text: str, step: int):
        self.log({"kind": "text", "step": step, "tag": tag, "text": text})
        for backend in self._backends:
            backend.text(tag, text, step)

    @property
    def wants_histograms(self):
        return any(backend.takes_histograms for backend in self._backends)

    def log_histograms(self, model, step: int):
        """Weight and gradient histograms, for the backends that draw them (too large for
        metrics.jsonl). Under FSDP each parameter is sharded and these are rank 0's shards."""
        takers = [backend for backend in self._backends if backend.takes_histograms]
        if not takers:
            return
        tensors = {}
        for name, param in model.named_parameters():
            for kind, tensor in (("weights", param), ("gradients", param.grad)):
                if tensor is not None:
                    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
                    tensors[f"{kind}/{name}"] = local.detach().float().cpu()
        for backend in takers:
            backend.histograms(tensors, step)

    def log_hparams(self, hparams: dict, metrics: dict):
        """The configuration and the final metrics, side by side (TensorBoard's hparams tab, the
        run summary of wandb and trackio)."""
        hparams = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
                   for key, value in hparams.items()}
        metrics = {f"final/{key}": value for key, value in json_ready(metrics).items() if _is_number(value)}
        for backend in self._backends:
            backend.hparams(hparams, metrics)

    def finish(self, summary: dict):
        if not self.enabled:
            return
        write_json_atomically(self.run_dir / "summary.json", summary)
        self.close()

    def close(self):
        if self._metrics:
            self._metrics.close()
            self._metrics = None
        for backend in self._backends:
            backend.close()
        self._backends = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()  # a run that raised gets no summary.json: its metrics end where it stopped


# ---------------------------------------------------------------- backends
# Each takes scalars {"<kind>/<field>": number}, text samples, optionally histograms, and the
# final hparams; their packages are imported only when chosen.

class TensorBoardBackend:
    takes_histograms = True

    def __init__(self, writer):
        self.writer = writer

    @classmethod
    def open(cls, run_dir, run_config, project):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("WARNING: tensorboard is not installed, so this run logs to metrics.jsonl only "
                  "(pip install tensorboard, or leave tensorboard out of logger_backends to silence this).")
            return None
        return cls(SummaryWriter(log_dir=str(run_dir)))

    def scalars(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def text(self, tag, text, step):
        self.writer.add_text(tag, text, global_step=step)

    def histograms(self, tensors, step):
        for tag, tensor in tensors.items():
            self.writer.add_histogram(tag, tensor, global_step=step)

    def hparams(self, hparams, metrics):
        self.writer.add_hparams(hparams, metrics, run_name=".")  # "." keeps it in this run's folder

    def close(self):
        self.writer.close()


class WandbBackend:
    """Weights & Biases. The run id is the run folder's name, so a resumed run continues the same
    wandb run; its local files go into the run folder (WANDB_MODE=offline works: wandb sync later)."""
    takes_histograms = True

    def __init__(self, wandb, run):
        self.wandb, self.run = wandb, run

    @classmethod
    def open(cls, run_dir, run_config, project):
        import wandb
        run = wandb.init(project=project, name=run_dir.name, id=wandb_run_id(run_dir.name), dir=str(run_dir),
                         config=run_config, resume="allow")
        return cls(wandb, run)

    def scalars(self, values, step):
        self.run.log(values, step=step)

    def text(self, tag, text, step):
        self.run.log({tag: self.wandb.Html(f"<pre>{_escape_html(text)}</pre>")}, step=step)

    def histograms(self, tensors, step):
        histograms = {tag: self.wandb.Histogram(tensor.flatten().numpy()) for tag, tensor in tensors.items()}
        self.run.log(histograms, step=step)

    def hparams(self, hparams, metrics):
        self.run.summary.update(metrics)

    def close(self):
        self.run.finish()


class TrackioBackend:
    """Hugging Face trackio (local SQLite under TRACKIO_DIR, or a Space). Text goes to
    metrics.jsonl and the other backends: trackio keeps numbers."""
    takes_histograms = False

    def __init__(self, trackio):
        self.trackio = trackio

    @classmethod
    def open(cls, run_dir, run_config, project):
        import trackio
        trackio.init(project=project, name=run_dir.name, config=run_config, resume="allow")
        return cls(trackio)

    def scalars(self, values, step):
        self.trackio.log(values, step=step)

    def text(self, tag, text, step):
        pass

    def hparams(self, hparams, metrics):
        self.trackio.log(metrics)

    def close(self):
        self.trackio.finish()


_BACKEND_CLASSES = {"tensorboard": TensorBoardBackend, "wandb": WandbBackend, "trackio": TrackioBackend}


def wandb_run_id(run_name):
    """wandb ids allow letters, digits, '-' and '_' (at most 64)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[:64]


def _escape_html(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def json_ready(value):
    """value with tensors and numpy numbers as Python numbers and non-finite floats as None."""
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and numpy scalars
        value = value.tolist()
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomically(path, obj):
    """Readers see the old file or the new one, never half of one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(json_ready(obj), indent=2, allow_nan=False, default=str) + "\n",
                       encoding="utf-8")
    os.replace(partial, path)


def read_metrics(run_dir) -> list[dict]:
    """The events of a run. A crash mid-write can leave the last line cut short; it is skipped."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    events = []
    for number, line in enumerate(lines, start=1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{run_dir}/metrics.jsonl line {number} is not JSON: {line[:80]!r}") from None
            print(f"WARNING: skipped 1 truncated line at the end of {run_dir}/metrics.jsonl "
                  f"(the run was probably killed while writing it).")
    return events


# ---------------------------------------------------------------- console

_CONSOLE_FIELDS = [  # event key, how it reads on the console
    ("loss", "loss {:.4f}"),
    ("lr", "lr {:.2e}"),
    ("grad_norm", "grad_norm {:.2f}"),
    ("step_ms", "{:.1f} ms/step"),
    ("tokens_per_sec", "{:,.0f} tok/s"),
]
# the first known of these is shown: the peak where the platform keeps one
_MEMORY_FIELDS = ["memory_peak_mib", "memory_peak_rss_mib", "memory_allocated_mib", "memory_rss_mib"]


def format_console_line(event: dict) -> str:
    """step 100 | loss 3.2141 | lr 6.00e-04 | ... | MFU 41.2% | mem 12.3 GiB | ETA 1h02m"""
    parts = [f"step {event['step']}"]
    parts += [text.format(event[key]) for key, text in _CONSOLE_FIELDS if event.get(key) is not None]
    if "mfu" in event:
        parts.append("MFU n/a" if event["mfu"] is None else f"MFU {100 * event['mfu']:.1f}%")
    memory_mib = next((event[key] for key in _MEMORY_FIELDS if event.get(key) is not None), None)
    if memory_mib is not None:
        parts.append(f"mem {memory_mib / 1024:.1f} GiB")
    if event.get("eta_seconds") is not None:
        parts.append(f"ETA {format_eta(event['eta_seconds'])}")
    return " | ".join(parts)


def format_eta(seconds: float) -> str:
    """45s, 3m07s, 1h02m: as precise as a remaining time is worth reading."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# ---------------------------------------------------------------- provenance

def git_commit() -> str | None:
    """Short hash of the checkout holding this file, '+dirty' if it has changes; None outside git."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return None
        changes = git("status", "--porcelain").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if changes else "")
