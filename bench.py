"""Times the real training step (training_setup + train_step: forward, backward, clipping,
optimizer, the loss check) on synthetic tokens or a prepared dataset.

    python bench.py config/arch_gpt2.py --batch_size=32
    python bench.py config/arch_gpt2.py --sweep batch_size=8,16,32,64
    python bench.py config/arch_gpt2.py --sweep sdpa_kernel=flash,cudnn --sweep compile_mode=default,max-autotune-no-cudagraphs
    python bench.py config/arch_gpt2.py --profile=True          # writes a torch.profiler trace

Bench options (--steps, --warmup, --sweep, --profile, --data, --out) are read here; every other
argument is a config file or --key=value for train.py's configuration.
MFU = model FLOPs/token (model_builder's count) x tokens/s / the device's dense peak (hardware.py).
"""
import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

import hardware
from data_loader import make_loader
from configurator import load_config_or_exit
from distributed import DistInfo
from model_config import ConfigError
from token_shards import read_dataset
from train_step import train_step
from training_setup import build_step_parts


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                        help="run once per value (repeat for a grid)")
    parser.add_argument("--profile", type=lambda v: v.lower() in ("1", "true"), default=False,
                        help="write a torch.profiler trace of a few steps to --out")
    parser.add_argument("--data", default="synthetic", help="synthetic (random tokens) | dataset (the configured one)")
    parser.add_argument("--out", default="bench_out", help="folder for traces and results.jsonl")
    return parser.parse_known_args(argv)


def sweep_overrides(sweeps):
    """Every combination of the --sweep values, as lists of --key=value arguments."""
    axes = []
    for sweep in sweeps:
        key, _, values = sweep.partition("=")
        if not values:
            raise SystemExit(f"--sweep {sweep!r}: expected KEY=V1,V2,...")
        axes.append([f"--{key}={value}" for value in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)] or [[]]


def batch_source(config, device, data):
    t, vocab, T = config.train, config.model.vocab_size, config.model.block_size
    if data == "dataset":
        loader = make_loader("random", read_dataset(Path(t.data_dir) / t.dataset), "train", t.batch_size, T,
                             seed=t.seed, device=device)
        return loader.next_batch
    generator = torch.Generator().manual_seed(t.seed)
    # a few distinct batches, so no step sees the data of the one before it in cache
    batches = [torch.randint(0, vocab, (t.batch_size, T + 1), generator=generator).to(device) for _ in range(4)]
    cycle = itertools.cycle([(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in batches])
    return lambda: next(cycle)


def measure(config, device, dtype, args):
    """One configuration: warm up, then time args.steps real steps; returns a result dict."""
    parts = build_step_parts(config, device, dtype, DistInfo())
    t = config.train
    next_batch = batch_source(config, device, args.data)
    cuda = device.startswith("cuda")
    steps_done = 0

    def step():
        nonlocal steps_done
        result = train_step(parts.step_model, parts.optimizer, next_batch, parts.accumulation_steps,
                            parts.autocast, t.grad_clip, parts.scaler, parts.pruner,
                            loss_settings=parts.loss_settings)
        steps_done += 1
        if parts.pruner:  # as train.py's loop: masks tighten on the schedule, so timed steps run sparse
            parts.pruner.after_step(parts.optimizer, steps_done)
        return result.loss_value()  # the loop's per-step loss check, a wait for the step's forward, as train.py's

    if cuda:  # the peak over warm-up too: CUDA graphs (compile_mode=auto, one GPU) allocate only while recording
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    if args.profile:
        write_profile(step, args.out)
    tokens_per_step = t.batch_size * config.model.block_size * parts.accumulation_steps
    flops = parts.model.flops_per_token(config.model.block_size)["total"]
    peak = hardware.run_peak_tflops(t.peak_tflops, hardware.device_name(device), dtype)
    result = {"arch": config.model.arch_name, "batch_size": t.batch_size, "ms_per_step": 1000 * seconds,
              "tokens_per_sec": tokens_per_step / seconds,
              "mfu": hardware.mfu(flops, tokens_per_step / seconds, peak),
              "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
              "final_loss": losses[-1], "params": parts.model.num_params(non_embedding=False),
              "sparsity": parts.pruner.sparsity_report()["sparsity_actual"] if parts.pruner else None}
    del parts
    if cuda:
        torch.cuda.empty_cache()
    return result


def write_profile(step, out):
    Path(out).mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(3):
            step()
    profiler.export_chrome_trace(str(Path(out) / f"trace-{int(time.time())}.json"))


def format_row(overrides, result):
    mfu = "n/a" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
    memory = "n/a" if result["peak_memory_gib"] is None else f"{result['peak_memory_gib']:.1f} GiB"
    label = " ".join(o.lstrip("-") for o in overrides) or "(as configured)"
    return (f"{label:<48} {result['tokens_per_sec']:>12,.0f} tok/s {result['ms_per_step']:>9.1f} ms/step "
            f"MFU {mfu:>6} peak {memory}")


def main(argv):
    args, config_args = parse_args(argv)
    rows = []
    for overrides in sweep_overrides(args.sweep):
        config, _ = load_config_or_exit(config_args + overrides)
        try:
            device = hardware.pick_device(config.train.device)
            dtype = hardware.pick_dtype(config.train.dtype, device)
        except ValueError as error:
            raise SystemExit(f"Error: {error}")
        hardware.enable_tf32()
        try:
            result = measure(config, device, dtype, args)
        except torch.cuda.OutOfMemoryError:
            print(f"{' '.join(overrides)}: out of memory")
            continue
        except ConfigError as error:
            raise SystemExit(f"Error: {error}")
        result.update(device=hardware.device_name(device), dtype=dtype, torch=torch.__version__,
                      overrides=overrides)
        rows.append((overrides, result))
        print(format_row(overrides, result), flush=True)
    print(f"\n{rows[0][1]['device'] if rows else ''}, torch {torch.__version__}; "
          f"MFU formula: model FLOPs/token x tokens/s / dense peak TFLOPS of one device")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "results.jsonl", "a") as f:
        for _, result in rows:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
