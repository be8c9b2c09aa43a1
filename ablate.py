"""Ablation grids: train variants of one configuration, one after another, then compare them.

    python ablate.py config/arch_gpt2.py --grid normalization=layernorm,rmsnorm \\
        position_encoding=learned_absolute,rope --max_iters=500          # every combination (4 runs)
    python ablate.py config/arch_gpt2.py --grid ... --one_at_a_time      # the base, then each option alone
    python ablate.py config/arch_llama.py config/my_steps.py             # named steps, see below
    python ablate.py ... --dry_run                                       # print the plan only

--one_at_a_time: the base run takes the first value of every --grid key; every other value gets a
run of its own with only that key changed (the classic ablation: 1 + sum(values - 1) runs).

Named steps: a config file that sets only ablation_steps, e.g.
    ablation_steps = {"V0": {}, "V1": {"ffn_type": "swiglu"}, "V2": {"ffn_type": "swiglu", "qk_norm": True}}
ablate.py reads it itself; the other config files and every --key=value go to train.py unchanged,
so all runs share the seed, the data order and the token budget, and differ only in their step.

Runs are named <name>-<key=value-...> (or <name>-<step>), <name> being --name or the config files'
names. A run whose <out_dir>/<run>/summary.json exists is finished and skipped, so the same
command resumes an interrupted grid; an unfinished run folder is deleted and that run starts again
from scratch. Changing --max_iters or other shared options? Give a new --name, or the finished
runs of the old grid are taken as they are. At the end, compare_architectures tables and plots
exactly these runs into --compare_out (default comparison/<name>).
"""
import argparse
import ast
import itertools
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import compare_architectures
from configurator import load_config, read_config_file, split_argv
from model_config import ConfigError

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
STEPS_KEY = "ablation_steps"


@dataclass(frozen=True)
class PlannedRun:
    name: str
    overrides: tuple  # "--key=value" arguments that make this run differ from the others


# ---------------------------------------------------------------- plans

def parse_grid(entries):
    """["key=v1,v2", ...] -> {key: [v1, v2]} (values stay strings, parsed by train.py)."""
    grid = {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        values = [v for v in values.split(",") if v]
        if not sep or not key or not values:
            raise ConfigError(f"--grid entry {entry!r} is not KEY=VALUE[,VALUE...], e.g. "
                              "normalization=layernorm,rmsnorm. Put config files before --grid.")
        if key in grid:
            raise ConfigError(f"--grid names {key!r} twice; list all its values in one entry: {key}=a,b,c.")
        grid[key] = values
    return grid


def grid_plan(name, grid):
    """Every combination of the grid's values."""
    return [planned_run(name, dict(zip(grid, values))) for values in itertools.product(*grid.values())]


def one_at_a_time_plan(name, grid):
    """The base (first value of every key), then one run per other value, that key changed alone."""
    base = {key: values[0] for key, values in grid.items()}
    return [planned_run(name, base)] + [planned_run(name, {**base, key: value})
                                        for key, values in grid.items() for value in values[1:]]


def steps_plan(name, steps):
    """One run per named step of ablation_steps ({step name: {key: value}})."""
    if not isinstance(steps, dict) or not steps or not all(isinstance(s, dict) for s in steps.values()):
        raise ConfigError(f"{STEPS_KEY} must be a non-empty dict of {{step name: {{key: value}}}}, e.g. "
                          f'{{"V0": {{}}, "V1": {{"ffn_type": "swiglu"}}}}; got {steps!r}.')
    return [PlannedRun(sanitize(f"{name}-{step}"), tuple(f"--{k}={format_value(v)}" for k, v in changes.items()))
            for step, changes in steps.items()]


def planned_run(name, assignment):
    label = "-".join(f"{key}={value}" for key, value in assignment.items())
    return PlannedRun(sanitize(f"{name}-{label}"), tuple(f"--{k}={v}" for k, v in assignment.items()))


def sanitize(run_name):
    """A run name usable as a folder name on any system."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", run_name)


def format_value(value):
    """A value from a config file as --key=value text that train.py parses back to the same value
    (train.py parses Python literals and takes any other text as a string)."""
    if isinstance(value, str) and not _is_literal(value):
        return value
    return repr(value)


def _is_literal(text):
    try:
        ast.literal_eval(text)
        return True
    except (ValueError, SyntaxError):
        return False


def read_steps_file(config_files):
    """(ablation_steps or None, the config files for train.py): a file that sets ablation_steps is
    read here and not passed on, so it may set nothing else."""
    steps, train_configs = None, []
    for path in config_files:
        text = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else ""
        namespace = read_config_file(path) if STEPS_KEY in text else {}
        if STEPS_KEY not in namespace:
            train_configs.append(path)  # train.py checks it (and reports a missing file)
            continue
        others = [key for key in namespace if key != STEPS_KEY]
        if others:
            raise ConfigError(f"Config file {path} sets {STEPS_KEY} and also {', '.join(others)}. Keep "
                              f"{STEPS_KEY} in a file of its own: ablate.py reads it and does not pass it to train.py.")
        if steps is not None:
            raise ConfigError(f"{STEPS_KEY} is set in more than one config file ({path} is the second); keep one.")
        steps = namespace[STEPS_KEY]
    return steps, train_configs


def make_plan(name, grid_entries, one_at_a_time, steps):
    if steps is not None and grid_entries:
        raise ConfigError(f"Give either --grid or a config file with {STEPS_KEY}, not both.")
    if steps is not None:
        if one_at_a_time:
            raise ConfigError(f"--one_at_a_time applies to --grid; {STEPS_KEY} already lists every run.")
        return steps_plan(name, steps)
    if not grid_entries:
        raise ConfigError(f"Nothing to ablate: give --grid KEY=V1,V2 ... or a config file that sets {STEPS_KEY}.")
    grid = parse_grid(grid_entries)
    return one_at_a_time_plan(name, grid) if one_at_a_time else grid_plan(name, grid)


def run_folders(plan, train_configs, passthrough):
    """{run name: its log folder}; loading every run's configuration first means a typo in any of
    them stops the grid before hours of training, not in the middle."""
    folders = {}
    for run in plan:
        if run.name in folders:
            raise ConfigError(f"Two runs of this plan would both be named {run.name!r} (a value listed twice, or "
                              "values that differ only in characters a folder name cannot hold).")
        config, _ = load_config([*train_configs, *passthrough, *run.overrides, f"--run_name={run.name}"])
        folders[run.name] = Path(config.train.out_dir) / run.name
    return folders


# ---------------------------------------------------------------- running

def is_finished(folder):
    return (Path(folder) / "summary.json").is_file()


def run_training(command):
    """Runs train.py to the end. On Ctrl-C (which train.py also receives) it waits for train.py to
    write its checkpoint and stop before passing the interrupt on."""
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.wait()
        raise


def execute(plan, folders, train_command):
    """Trains the plan's unfinished runs in order; returns the names of those that did not finish."""
    failed = []
    for run in plan:
        folder = folders[run.name]
        if is_finished(folder):
            print(f"skipping {run.name}: finished ({folder / 'summary.json'} exists)")
            continue
        if folder.exists():
            print(f"{run.name} did not finish before; deleting {folder} and training it again from scratch")
            shutil.rmtree(folder)
        command = [*train_command, *run.overrides, f"--run_name={run.name}"]
        print(f"\n=== {run.name}\n{' '.join(command)}", flush=True)
        returncode = run_training(command)
        if is_finished(folder):
            continue
        failed.append(run.name)
        if returncode == 0:  # train.py stopped early on a signal: whoever sent it wants the grid stopped
            print(f"{run.name} was stopped before the end; run the same command again to continue the grid.")
            break
        print(f"{run.name} failed (exit code {returncode}); going on with the next run.")
    return failed


def print_plan(name, plan, folders, train_command):
    print(f"ablation {name}: {len(plan)} runs, one after another")
    for run in plan:
        state = "finished, skip" if is_finished(folders[run.name]) else \
            "unfinished, restart" if folders[run.name].exists() else "to run"
        print(f"  [{state}] {run.name}")
        print(f"      {' '.join([*train_command, *run.overrides, f'--run_name={run.name}'])}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # so train.py's options are never taken for ours
    parser.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2")
    parser.add_argument("--one_at_a_time", action="store_true")
    parser.add_argument("--name", help="prefix of the run names (default: the config files' names)")
    parser.add_argument("--dry_run", action="store_true", help="print the plan and stop")
    parser.add_argument("--compare_out", help="folder for the comparison (default: comparison/<name>)")
    parser.add_argument("--format", default="png", choices=compare_architectures.FORMATS)
    parser.add_argument("--train_script", default=str(TRAIN_SCRIPT), help="the training script (default: train.py)")
    args, rest = parser.parse_known_args(argv)
    try:  # train.py's own reading of its arguments: --key value, --key=value, bare boolean --flag
        config_files, overrides = split_argv(rest)
    except ConfigError as error:
        parser.error(str(error))
    passthrough = [f"--{key}" if raw is None else f"--{key}={raw}" for key, raw in overrides]
    if any(a.startswith("--run_name") for a in passthrough):
        parser.error("ablate.py names every run itself; remove --run_name (use --name to set their prefix).")
    args.name = sanitize(args.name or "-".join(Path(p).stem for p in config_files) or "ablation")
    return args, config_files, passthrough


def main(argv):
    args, config_files, passthrough = parse_args(argv)
    try:
        steps, train_configs = read_steps_file(config_files)
        plan = make_plan(args.name, args.grid, args.one_at_a_time, steps)
        folders = run_folders(plan, train_configs, passthrough)
    except ConfigError as error:
        print(f"Configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    train_command = [sys.executable, args.train_script, *train_configs, *passthrough]
    print_plan(args.name, plan, folders, train_command)
    if args.dry_run:
        return
    try:
        failed = execute(plan, folders, train_command)
    except KeyboardInterrupt:
        sys.exit("\ninterrupted; run the same command again to continue the grid where it stopped.")
    runs, _ = compare_architectures.read_runs(f for f in folders.values() if f.exists())
    if runs:
        compare_architectures.compare(runs, args.compare_out or Path("comparison") / args.name, args.format)
    if failed:
        sys.exit(f"{len(failed)} run(s) did not finish: {', '.join(failed)}")


if __name__ == "__main__":
    main(sys.argv[1:])
