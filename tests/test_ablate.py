"""ablate.py: plans, run names, resuming with a fake training script, and one real 2x2 grid."""
import json

import pytest

import ablate
from ablate import PlannedRun, format_value, grid_plan, make_plan, read_steps_file
from conftest import REPO_ROOT, tiny_ablation_args
from model_config import ConfigError

GRID = ["normalization=layernorm,rmsnorm", "position_encoding=learned_absolute,rope"]

# Stands in for train.py: logs its arguments; finishes the run (config, metrics, summary), or,
# for the run names in FAKE_TRAIN_CRASH, writes no summary and exits 1 (FAKE_TRAIN_STOP: exits 0,
# as train.py does when a signal stops it).
FAKE_TRAIN = """
import json, os, sys
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
with open(os.environ["FAKE_TRAIN_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
run = Path(args["out_dir"]) / args["run_name"]
run.mkdir(parents=True)
(run / "config.json").write_text(json.dumps({"arch_name": "fake", "params": 1000}))
(run / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 0, "tokens": 0, "val_loss": 1.5}) + "\\n")
if args["run_name"] in os.environ.get("FAKE_TRAIN_CRASH", "").split(","):
    sys.exit(1)
if args["run_name"] in os.environ.get("FAKE_TRAIN_STOP", "").split(","):
    sys.exit(0)
(run / "summary.json").write_text(json.dumps({"best_val_loss": 1.5, "tokens": 0}))
"""


def test_grid_runs_every_combination_with_deterministic_names():
    plan = make_plan("g", GRID, one_at_a_time=False, steps=None)
    assert plan == [
        PlannedRun("g-normalization=layernorm-position_encoding=learned_absolute",
                   ("--normalization=layernorm", "--position_encoding=learned_absolute")),
        PlannedRun("g-normalization=layernorm-position_encoding=rope",
                   ("--normalization=layernorm", "--position_encoding=rope")),
        PlannedRun("g-normalization=rmsnorm-position_encoding=learned_absolute",
                   ("--normalization=rmsnorm", "--position_encoding=learned_absolute")),
        PlannedRun("g-normalization=rmsnorm-position_encoding=rope",
                   ("--normalization=rmsnorm", "--position_encoding=rope")),
    ]
    assert make_plan("g", GRID, one_at_a_time=False, steps=None) == plan


def test_one_at_a_time_changes_each_option_alone_from_the_base():
    plan = make_plan("g", ["normalization=layernorm,rmsnorm", "position_encoding=learned_absolute,rope,none"],
                     one_at_a_time=True, steps=None)
    assert [run.overrides for run in plan] == [
        ("--normalization=layernorm", "--position_encoding=learned_absolute"),  # the base
        ("--normalization=rmsnorm", "--position_encoding=learned_absolute"),
        ("--normalization=layernorm", "--position_encoding=rope"),
        ("--normalization=layernorm", "--position_encoding=none"),
    ]
    # the base is named as the same combination in a full grid, so either mode reuses it
    assert plan[0].name == grid_plan("g", {"normalization": ["layernorm"],
                                           "position_encoding": ["learned_absolute"]})[0].name


def test_named_steps_come_from_their_own_config_file(tmp_path):
    steps_file = tmp_path / "steps.py"
    steps_file.write_text('import math\nablation_steps = {"V0": {}, "V1": {"ffn_type": "swiglu", "qk_norm": True},\n'
                          '                  "V2/lr": {"learning_rate": 3e-4, "dataset": "2024"}}\n')
    base = str(REPO_ROOT / "config" / "arch_llama.py")
    steps, train_configs = read_steps_file([base, str(steps_file)])
    assert train_configs == [base]  # train.py never sees ablation_steps
    plan = make_plan("llama", [], one_at_a_time=False, steps=steps)
    assert plan == [PlannedRun("llama-V0", ()),
                    PlannedRun("llama-V1", ("--ffn_type=swiglu", "--qk_norm=True")),
                    PlannedRun("llama-V2_lr", ("--learning_rate=0.0003", "--dataset='2024'"))]


def test_a_steps_file_that_sets_other_keys_or_a_grid_as_well_is_an_error(tmp_path):
    mixed = tmp_path / "mixed.py"
    mixed.write_text('n_layer = 4\nablation_steps = {"V0": {}}\n')
    with pytest.raises(ConfigError, match="sets ablation_steps and also n_layer"):
        read_steps_file([str(mixed)])
    with pytest.raises(ConfigError, match="either --grid or a config file with ablation_steps"):
        make_plan("x", GRID, one_at_a_time=False, steps={"V0": {}})
    with pytest.raises(ConfigError, match="must be a non-empty dict"):
        make_plan("x", [], one_at_a_time=False, steps={"V0": "swiglu"})
    with pytest.raises(ConfigError, match="'normalization' is not KEY=VALUE"):
        make_plan("x", ["normalization"], one_at_a_time=False, steps=None)


def test_values_from_config_files_survive_the_command_line():
    assert [format_value(v) for v in ("swiglu", "1", True, 3e-4, None, [1, 2])] == \
        ["swiglu", "'1'", "True", "0.0003", "None", "[1, 2]"]


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.chdir(tmp_path)
    return script


def ablate_args(tmp_path, script, *extra):
    return [str(REPO_ROOT / "config" / "arch_gpt2.py"), "--grid", *GRID, "--name=g", f"--train_script={script}",
            f"--out_dir={tmp_path / 'runs'}", "--max_iters=7", f"--compare_out={tmp_path / 'cmp'}", *extra]


def calls(tmp_path):
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_interrupted_grid_resumes_skipping_finished_runs(tmp_path, fake_train, monkeypatch):
    crashed = "g-normalization=layernorm-position_encoding=rope"
    monkeypatch.setenv("FAKE_TRAIN_CRASH", crashed)
    with pytest.raises(SystemExit, match=f"1 run\\(s\\) did not finish: {crashed}"):
        ablate.main(ablate_args(tmp_path, fake_train))
    first = calls(tmp_path)
    assert len(first) == 4  # a crash does not stop the grid
    assert first[0] == [str(REPO_ROOT / "config" / "arch_gpt2.py"), f"--out_dir={tmp_path / 'runs'}",
                        "--max_iters=7", "--normalization=layernorm", "--position_encoding=learned_absolute",
                        "--run_name=g-normalization=layernorm-position_encoding=learned_absolute"]
    assert "| running or crashed |" in (tmp_path / "cmp" / "comparison.md").read_text()

    monkeypatch.delenv("FAKE_TRAIN_CRASH")
    ablate.main(ablate_args(tmp_path, fake_train))
    again = calls(tmp_path)[4:]
    assert [call[-1] for call in again] == [f"--run_name={crashed}"]  # only the unfinished run, from scratch
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table.count("| finished |") == 4 and "running or crashed" not in table


def test_a_run_stopped_by_a_signal_stops_the_grid(tmp_path, fake_train, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_STOP", "g-normalization=layernorm-position_encoding=rope")
    with pytest.raises(SystemExit, match="did not finish"):
        ablate.main(ablate_args(tmp_path, fake_train))
    assert len(calls(tmp_path)) == 2


def test_dry_run_and_bad_values_train_nothing(tmp_path, fake_train, capsys):
    ablate.main(ablate_args(tmp_path, fake_train, "--dry_run"))
    printed = capsys.readouterr().out
    assert "ablation g: 4 runs" in printed and printed.count("[to run]") == 4
    with pytest.raises(SystemExit) as exit_info:
        ablate.main([*ablate_args(tmp_path, fake_train)[:2], "normalization=layernorm,rmsnrom",
                     *ablate_args(tmp_path, fake_train)[4:]])
    assert exit_info.value.code == 2 and "Did you mean 'rmsnorm'?" in capsys.readouterr().err
    assert calls(tmp_path) == []



def test_a_2x2_grid_of_tiny_real_runs_end_to_end(tmp_path, char_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = tiny_ablation_args(tmp_path, char_data, max_iters=5)
    ablate.main([str(REPO_ROOT / "config" / "arch_gpt2.py"), "--grid", *GRID, *tiny,
                 f"--compare_out={tmp_path / 'cmp'}"])
    names = [run.name for run in grid_plan("arch_gpt2", ablate.parse_grid(GRID))]
    for name in names:
        summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        assert summary["steps"] == 5 and summary["tokens"] == 5 * 4 * 32  # the same token budget
    records = [json.loads((tmp_path / "runs" / name / "config.json").read_text()) for name in names]
    assert [(r["config"]["model"]["normalization"], r["config"]["model"]["position_encoding"]) for r in records] == \
        [("layernorm", "learned_absolute"), ("layernorm", "rope"), ("rmsnorm", "learned_absolute"),
         ("rmsnorm", "rope")]
    assert {r["config"]["train"]["seed"] for r in records} == {1337}
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert all(f"| {name} |" in table for name in names) and table.count("| finished |") == 4


def test_train_options_are_read_as_train_py_reads_them():
    args, config_files, passthrough = ablate.parse_args(
        ["--grid", "normalization=layernorm,rmsnorm", "--compile", "config/arch_gpt2.py", "--max_iters", "5"])
    assert config_files == ["config/arch_gpt2.py"] and passthrough == ["--compile", "--max_iters=5"]
    assert args.grid == ["normalization=layernorm,rmsnorm"]
    with pytest.raises(SystemExit):
        ablate.parse_args(["config/arch_gpt2.py", "--max_itres=5"])  # an unknown key, named with a suggestion
