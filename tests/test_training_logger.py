import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from training_logger import TrainingLogger, format_console_line, format_eta, git_commit, read_metrics

RUN_CONFIG = {"model": {"n_layer": 2}, "learning_rate": 6e-4, "out_dir": "runs"}


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_config_metrics_and_summary(tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    logger = TrainingLogger(run_dir, RUN_CONFIG, backends=())
    assert json.loads((run_dir / "config.json").read_text()) == RUN_CONFIG
    logger.log({"kind": "train", "step": 1, "loss": torch.tensor(3.5), "lr": np.float32(0.5), "ok": np.bool_(True)})
    logger.log({"kind": "eval", "step": 2, "val_loss": 3.25})
    assert lines(run_dir / "metrics.jsonl") == [  # on disk before finish: a crash loses nothing
        {"kind": "train", "step": 1, "loss": 3.5, "lr": 0.5, "ok": True},
        {"kind": "eval", "step": 2, "val_loss": 3.25}]
    logger.finish({"steps": 2, "best_val_loss": 3.25})
    assert json.loads((run_dir / "summary.json").read_text()) == {"steps": 2, "best_val_loss": 3.25}
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.jsonl", "summary.json"]


def test_a_resumed_run_appends(tmp_path):
    with TrainingLogger(tmp_path, RUN_CONFIG, backends=()) as logger:
        logger.log({"kind": "train", "step": 1})
    with TrainingLogger(tmp_path, RUN_CONFIG, backends=()) as logger:
        logger.log({"kind": "train", "step": 2})
    assert [e["step"] for e in read_metrics(tmp_path)] == [1, 2]


def test_non_finite_numbers_are_null(tmp_path):
    with TrainingLogger(tmp_path, RUN_CONFIG, backends=()) as logger:
        logger.log({"kind": "train", "step": 1, "loss": math.nan, "grad_norm": torch.tensor(math.inf),
                    "history": [1.0, -math.inf]})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"kind": "train", "step": 1, "loss": None, "grad_norm": None, "history": [1.0, None]}


def test_an_event_needs_kind_and_step(tmp_path):
    with TrainingLogger(tmp_path, RUN_CONFIG, backends=()) as logger:
        with pytest.raises(ValueError, match="kind"):
            logger.log({"step": 1, "loss": 3.0})


def test_tensorboard_gets_the_numbers(tmp_path):
    with TrainingLogger(tmp_path, RUN_CONFIG) as logger:
        logger.log({"kind": "train", "step": 10, "loss": 2.5, "mfu": None, "flag": True, "note": "x"})
        logger.log({"kind": "train", "step": 20, "loss": math.nan})
        logger.log_text("sample", "ROMEO: hello", step=20)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.Tags()["scalars"] == ["train/loss"]
    assert [(s.step, s.value) for s in events.Scalars("train/loss")] == [(10, 2.5)]
    assert read_metrics(tmp_path)[-1] == {"kind": "text", "step": 20, "tag": "sample", "text": "ROMEO: hello"}


def test_disabled_logger_writes_nothing(tmp_path):
    run_dir = tmp_path / "rank1"
    with TrainingLogger(run_dir, RUN_CONFIG, enabled=False) as logger:
        logger.log({"kind": "train", "step": 1, "loss": 3.0})
        logger.log_text("sample", "text", step=1)
        logger.finish({"steps": 1})
    assert not run_dir.exists()


def test_an_exception_leaves_no_summary(tmp_path):
    with pytest.raises(RuntimeError):
        with TrainingLogger(tmp_path, RUN_CONFIG, backends=()) as logger:
            logger.log({"kind": "train", "step": 1})
            raise RuntimeError("crash")
    assert not (tmp_path / "summary.json").exists() and len(read_metrics(tmp_path)) == 1


def test_read_metrics_skips_a_truncated_last_line(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n{"kind": "train", "st')
    assert read_metrics(tmp_path) == [{"kind": "train", "step": 1}]
    assert "skipped 1 truncated line" in capsys.readouterr().out


def test_read_metrics_refuses_a_broken_middle_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "tr\n{"kind": "train", "step": 1}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_metrics(tmp_path)


def test_console_line():
    event = {"kind": "train", "step": 100, "loss": 3.21414, "lr": 6e-4, "grad_norm": 1.234, "step_ms": 45.12,
             "tokens_per_sec": 181234.4, "mfu": 0.41234, "memory_peak_mib": 12.3 * 1024, "eta_seconds": 3725}
    assert format_console_line(event) == ("step 100 | loss 3.2141 | lr 6.00e-04 | grad_norm 1.23 | 45.1 ms/step | "
                                          "181,234 tok/s | MFU 41.2% | mem 12.3 GiB | ETA 1h02m")
    assert format_console_line({"step": 5, "loss": 2.0, "grad_norm": None, "mfu": None}) == \
        "step 5 | loss 2.0000 | MFU n/a"


def test_format_eta():
    assert [format_eta(s) for s in (0, 45.4, 187, 3725, 90000)] == ["0s", "45s", "3m07s", "1h02m", "25h00m"]


def test_git_commit_is_a_hash_or_none():
    commit = git_commit()
    assert commit is None or len(commit.removesuffix("+dirty")) >= 7


# ---------------------------------------------------------------- wandb and trackio

class Recorder:
    """Stands in for the wandb or trackio module: their documented calls, recorded."""

    def __init__(self, name):
        import importlib.machinery
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)
        self.calls, self.summary = [], {}

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self

    def log(self, values, step=None):
        self.calls.append(("log", values, step))

    def finish(self):
        self.calls.append(("finish",))

    def Html(self, html):
        return ("html", html)

    def Histogram(self, array):
        return ("histogram", len(array))


@pytest.fixture
def fake_packages(monkeypatch):
    fakes = {name: Recorder(name) for name in ("wandb", "trackio")}
    for name, fake in fakes.items():
        monkeypatch.setitem(sys.modules, name, fake)
    return fakes


def test_wandb_gets_scalars_text_histograms_and_summary(tmp_path, fake_packages):
    wandb = fake_packages["wandb"]
    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    with TrainingLogger(tmp_path / "gpt2 run", RUN_CONFIG, backends=["wandb"], project="lab") as logger:
        logger.log({"kind": "train", "step": 10, "loss": 2.5, "mfu": None, "note": "x"})
        logger.log_text("sample", "a<b", step=10)
        assert logger.wants_histograms
        logger.log_histograms(model, step=10)
        logger.log_hparams({"n_layer": 2}, {"best_val_loss": 1.5, "steps": 10})
    assert wandb.calls[0] == ("init", {"project": "lab", "name": "gpt2 run", "id": "gpt2-run",
                                       "dir": str(tmp_path / "gpt2 run"), "config": RUN_CONFIG, "resume": "allow"})
    assert wandb.calls[1:] == [
        ("log", {"train/loss": 2.5}, 10),
        ("log", {"sample": ("html", "<pre>a&lt;b</pre>")}, 10),
        ("log", {"weights/weight": ("histogram", 6), "gradients/weight": ("histogram", 6),
                 "weights/bias": ("histogram", 2), "gradients/bias": ("histogram", 2)}, 10),
        ("finish",)]
    assert wandb.summary == {"final/best_val_loss": 1.5, "final/steps": 10}


def test_trackio_gets_scalars_and_final_metrics(tmp_path, fake_packages):
    trackio = fake_packages["trackio"]
    with TrainingLogger(tmp_path / "run1", RUN_CONFIG, backends=["trackio"]) as logger:
        logger.log({"kind": "eval", "step": 5, "val_loss": 3.0, "val_perplexity": 20.0})
        logger.log_text("sample", "text", step=5)
        assert not logger.wants_histograms
        logger.log_hparams({"n_layer": 2}, {"best_val_loss": 3.0})
    assert trackio.calls == [
        ("init", {"project": "gpt-workbench", "name": "run1", "config": RUN_CONFIG, "resume": "allow"}),
        ("log", {"eval/val_loss": 3.0, "eval/val_perplexity": 20.0}, 5),
        ("log", {"final/best_val_loss": 3.0}, None),
        ("finish",)]


def test_real_wandb_offline_run_lands_in_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with TrainingLogger(tmp_path / "run1", RUN_CONFIG, backends=["wandb"]) as logger:
        logger.log({"kind": "train", "step": 1, "loss": 2.5})
    records = list((tmp_path / "run1" / "wandb").glob("offline-run-*-run1/run-run1.wandb"))
    assert len(records) == 1 and b"train/loss" in records[0].read_bytes()


def test_real_trackio_stores_the_metrics(tmp_path):
    pytest.importorskip("trackio")
    # trackio reads TRACKIO_DIR when imported, so it runs in a fresh process
    script = ("from training_logger import TrainingLogger\n"
              "with TrainingLogger(sys.argv[1], {}, backends=['trackio'], project='lab') as logger:\n"
              "    logger.log({'kind': 'train', 'step': 1, 'loss': 2.5})\n"
              "    logger.log({'kind': 'train', 'step': 2, 'loss': 2.25})\n")
    subprocess.run([sys.executable, "-c", "import sys\n" + script, str(tmp_path / "run1")], check=True,
                   cwd=Path(__file__).resolve().parents[1],
                   env={**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")})
    with sqlite3.connect(tmp_path / "trackio" / "lab.db") as connection:
        rows = connection.execute("SELECT step, metrics FROM metrics WHERE run_name = 'run1' ORDER BY step").fetchall()
    assert [(step, json.loads(metrics)["train/loss"]) for step, metrics in rows] == [(1, 2.5), (2, 2.25)]
