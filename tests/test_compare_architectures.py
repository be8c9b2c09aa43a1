"""compare_architectures.py on fabricated run folders with known numbers."""
import json

import matplotlib.image
import pytest

import compare_architectures
from compare_architectures import FINISHED, UNFINISHED, compare, select_runs


def write_run(folder, record, events, summary=None, truncated_tail=""):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(record))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + truncated_tail)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def record(preset, params, flops, started):
    return {"config": {"model": {"arch_preset": preset}, "train": {}}, "arch_name": f"2L-{preset}",
            "params": params, "flops_per_token": {"ffn": 1, "total": flops}, "started": started}


def train_event(step, tokens, loss, tokens_per_sec, mfu, memory, **timing):
    return {"kind": "train", "step": step, "tokens": tokens, "loss": loss, "tokens_per_sec": tokens_per_sec,
            "mfu": mfu, "memory_peak_mib": memory, **timing}


def eval_event(step, tokens, val_loss, **timing):
    return {"kind": "eval", "step": step, "tokens": tokens, "train_loss": val_loss - 0.1, "val_loss": val_loss,
            **timing}


@pytest.fixture
def runs_dir(tmp_path):
    runs = tmp_path / "runs"
    # alpha finished; its events carry "time" (seconds since the start)
    write_run(runs / "alpha", record("gpt2", 1_500_000, 9_000_000, "2025-01-01T10:00:00"), [
        eval_event(0, 0, 4.2, time=0.0),
        train_event(1, 1000, 4.0, 1000, 0.1, 100, time=1.0),
        train_event(11, 11000, 3.0, 3000, 0.3, 300, time=11.0),
        eval_event(20, 20000, 2.8, time=20.5),
        train_event(21, 21000, 2.5, 2000, 0.2, 200, time=21.0),
        eval_event(40, 40000, 2.4, time=125.0),
        {"kind": "hellaswag", "step": 40, "tokens": 40000, "acc": 0.28, "acc_norm": 0.31, "count": 100},
    ], summary={"steps": 40, "tokens": 40000, "best_val_loss": 2.4})
    # beta crashed mid-write: no summary, no "time" (step_ms only), no MFU, a cut-off last line
    write_run(runs / "beta", record("llama", 2_000_000, 1.2e9, "2025-01-02T10:00:00"), [
        eval_event(0, 0, 4.0),
        train_event(1, 1000, 3.9, 500, None, 50, step_ms=100),
        eval_event(10, 10000, 3.0),
        train_event(11, 11000, 2.9, 700, None, 60, step_ms=200),
        train_event(21, 21000, 2.1, 600, None, 70, step_ms=300),
        eval_event(30, 30000, 2.0),
    ], truncated_tail='{"kind": "train", "step": 31, "tok')
    (runs / "notes").mkdir()
    (runs / "notes" / "todo.txt").write_text("not a run")
    write_run(runs / "broken", record("gpt2", 1, 1, "x"), [eval_event(0, 0, 4.0)],
              truncated_tail='{"kind": "tra\n' + json.dumps(eval_event(5, 50, 3.0)) + "\n")
    (runs / "half").mkdir()
    (runs / "half" / "config.json").write_text("{}")  # crashed before its first event was even opened
    return runs


def test_table_numbers(runs_dir, tmp_path):
    runs, notes = select_runs(runs_dir)
    assert [run.name for run in runs] == ["alpha", "beta"]
    assert notes[0].startswith(f"skipped {runs_dir / 'broken'}: unreadable: ") and "line 2 is not JSON" in notes[0]
    assert notes[1:] == [f"skipped {runs_dir / 'half'}: not a run (no config.json and metrics.jsonl in it)",
                     f"skipped {runs_dir / 'notes'}: not a run (no config.json and metrics.jsonl in it)"]
    rows, paths = compare(runs, tmp_path / "out")
    alpha, beta = rows
    assert alpha == pytest.approx({
        "run": "alpha", "arch": "2L-gpt2", "preset": "gpt2", "params": 1_500_000, "flops_per_token": 9_000_000,
        "best_val_loss": 2.4, "val_loss_equal_tokens": 2.6,  # at 30000 tokens, halfway from 2.8 to 2.4
        "final_train_loss": 2.5, "tokens_per_sec": 2000, "mfu": 0.2, "peak_memory_mib": 300,
        "hellaswag_acc_norm": 0.31, "wall_seconds": 125.0, "tokens": 40000, "status": FINISHED})
    assert beta == pytest.approx({
        "run": "beta", "arch": "2L-llama", "preset": "llama", "params": 2_000_000, "flops_per_token": 1.2e9,
        "best_val_loss": 2.0, "val_loss_equal_tokens": 2.0, "final_train_loss": 2.1, "tokens_per_sec": 600,
        "mfu": None, "peak_memory_mib": 70, "hellaswag_acc_norm": None,
        "wall_seconds": 5.1,  # 1 x 0.1 s + 10 x 0.2 s + 10 x 0.3 s of logged step times
        "tokens": 30000, "status": UNFINISHED})
    table = paths["table"].read_text().splitlines()
    assert table[0].split(" | ")[6] == "val loss @ 30.00k tokens"
    assert table[2] == ("| alpha | 2L-gpt2 | gpt2 | 1.50M | 9.00M | 2.4000 | 2.6000 | 2.5000 | 2,000 | 20.0% | "
                        "300 MiB | 0.3100 | 2m05s | 40.00k | finished |")
    assert table[3] == ("| beta | 2L-llama | llama | 2.00M | 1.20G | 2.0000 | 2.0000 | 2.1000 | 600 | n/a | "
                        "70 MiB | n/a | 5s | 30.00k | running or crashed |")


def test_plots_exist_and_decode(runs_dir, tmp_path):
    runs, _ = select_runs(runs_dir)
    _, paths = compare(runs, tmp_path / "out")
    for key in ("loss_vs_tokens", "loss_vs_time", "throughput"):
        image = matplotlib.image.imread(paths[key])
        assert paths[key].suffix == ".png" and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # something was drawn


def test_cli_selects_runs_by_name_or_latest_and_writes_svg(runs_dir, tmp_path, capsys):
    out = tmp_path / "svg"
    compare_architectures.main(["--runs_dir", str(runs_dir), "--runs", "beta", "notes", "--out", str(out),
                                "--format", "svg"])
    printed = capsys.readouterr().out
    assert f"skipped {runs_dir / 'notes'}: not a run" in printed and "| beta |" in printed
    assert (out / "loss_vs_time.svg").read_text().lstrip().startswith("<?xml")
    assert "| alpha |" not in (out / "comparison.md").read_text()
    latest, _ = select_runs(runs_dir, latest=1)
    assert [run.name for run in latest] == ["beta"]


def test_no_runs_is_a_message_not_a_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="No runs to compare"):
        compare_architectures.main(["--runs_dir", str(tmp_path / "empty")])


def test_a_resumed_run_counts_each_step_once(tmp_path):
    # resumed from step 10 after a crash at step 20: steps 11..20 were logged twice, the later wins
    write_run(tmp_path / "runs" / "resumed", record("gpt2", 1, 1, "x"), [
        eval_event(0, 0, 4.0), eval_event(10, 100, 3.0), eval_event(20, 200, 9.9),
        eval_event(20, 200, 2.5), eval_event(30, 300, 2.0)])
    runs, _ = select_runs(tmp_path / "runs")
    tokens, _, val = compare_architectures.curve(runs[0], "eval", "val_loss")
    assert tokens.tolist() == [0, 100, 200, 300] and val.tolist() == [4.0, 3.0, 2.5, 2.0]
