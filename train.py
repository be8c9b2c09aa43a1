"""Train a GPT.

    python train.py config/arch_llama.py --max_iters=100
    python train.py config/arch_gpt2.py config/shakespeare_char_cpu.py --normalization=rmsnorm
    python train.py --resume=latest --run_name=NAME [--max_iters=MORE]
    python train.py --list_checkpoints [--run_name=NAME]

Reads top to bottom: configuration, data, model, optimizer, loop. The pieces live in modules:
configurator (options), data_loader (batches), model_builder (the GPT), optimizers (AdamW and
the LR schedule), train_step (one update), evaluation, training_logger (run logs), hardware
(device, dtype, MFU), checkpointing (files on disk) and shutdown (signals).
"""
import dataclasses
import math
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

import checkpointing
import distributed
import hardware
import memory_estimate
from configurator import describe_changes, explicit_keys, load_config_or_exit, merge_resumed_config
from data_loader import make_loader
from evaluation import estimate_loss, evaluate_hellaswag, generate_sample, hellaswag_file, load_hellaswag, perplexity
from hf_interop import check_dataset_fits, from_hf
from linear_cross_entropy import LossSettings
from model_config import ConfigError
from optimizers import effective_max_iters, lr_at, set_lr
from shutdown import GracefulShutdown
from token_shards import DataError, check_enough_tokens, read_dataset
from tokenizer import tokenizer_from_meta
from train_step import train_step
from training_setup import accumulation_for, build_step_parts
from training_logger import TrainingLogger, format_console_line, git_commit


class NonFiniteLossError(RuntimeError):
    pass


@dataclasses.dataclass
class Progress:
    """Everything about where training stands; saved in every checkpoint."""
    step: int = 0  # optimizer steps completed
    tokens: int = 0
    epoch: int = 0
    best_val_loss: float = float("inf")
    best_step: int = 0
    train_seconds: float = 0.0


@dataclasses.dataclass
class Run:
    config: object
    dist: distributed.DistInfo
    strategy: str  # ddp | zero1 | fsdp (ddp, and nothing to wrap, in a single process)
    device: str
    git_commit: str | None  # the checkout's commit, read once: checkpoints record it
    model: torch.nn.Module  # the plain model: checkpoints, generation
    step_model: torch.nn.Module  # what the step runs: compiled and/or wrapped
    optimizer: torch.optim.Optimizer
    pruner: object  # pruning.Pruner, or None without pruning
    max_iters: int  # effective_max_iters: bitter2 trains longer than max_iters
    scaler: object
    autocast: object
    loss_settings: LossSettings
    dataset: object
    train_loader: object
    accumulation_steps: int
    tokens_per_step: int
    flops_per_token: float
    peak_tflops: float | None
    logger: TrainingLogger
    checkpoints: checkpointing.CheckpointManager
    progress: Progress
    tokenizer: object  # for text samples and HellaSwag; None when neither is on
    hellaswag: list  # HellaSwag examples; empty when hellaswag_interval is 0


def main(argv):
    if "--list_checkpoints" in argv:
        return list_checkpoints(argv)
    config, sources = load_config_or_exit(argv)
    try:
        run = setup(config, sources)
        train(run)
    except (ConfigError, DataError) as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)
    except (NonFiniteLossError, checkpointing.CheckpointError) as error:
        print(f"Stopped: {error}", file=sys.stderr)
        sys.exit(1)
    except RuntimeError as error:
        if not distributed.is_peer_failure(error):
            raise
        print(f"Stopped: {distributed.peer_failure_message(error)}", file=sys.stderr)
        sys.exit(1)
    finally:
        distributed.shutdown()


def setup(config, sources):
    resumed = None
    if config.train.resume:
        path, resumed, _ = checkpointing.load_for_resume(resume_candidates(config))
        config, sources, conflicts = merge_resumed_config(config, sources, resumed["config"])
        for key, saved, requested in conflicts:
            print(f"WARNING: {key}={requested!r} ignored: the checkpoint's architecture has {key}={saved!r}.")
        print(f"resuming from {path} at step {resumed['progress']['step']}")
    t = config.train
    try:
        device = hardware.pick_device(t.device)
        dtype = hardware.pick_dtype(t.dtype, device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    dist = distributed.init(device.split(":")[0], t.dist_timeout_minutes)
    if dist.enabled and device == "cuda":
        device = f"cuda:{dist.local_rank}"
    hardware.enable_tf32()

    # ---- data
    dataset = read_dataset(Path(t.data_dir) / t.dataset)
    pretrained = None
    if not resumed and t.init_from not in ("scratch", "resume"):
        # released weights fix the architecture and vocabulary; explicit options may only agree with them
        pretrained, model_cfg = from_hf(t.init_from, **explicit_model_options(config.model, sources))
        check_dataset_fits(t.init_from, model_cfg, dataset.meta)
        config = dataclasses.replace(config, model=model_cfg)
    elif not resumed:
        config = dataclasses.replace(config, model=fit_vocab(config.model, dataset.vocab_size, sources, t.pad_vocab))
    model_cfg = config.model
    check_enough_tokens(dataset, model_cfg.block_size)
    # ---- memory: the estimate (--dry_run stops here); a run that would not fit is refused
    config = memory_estimate.plan_memory(config, device, dtype, dist,
                                         accumulation_for(t, model_cfg.block_size, dist.world_size), dataset.train_tokens)
    if config.train.dry_run:
        sys.exit(0)
    t = config.train
    train_loader = make_loader(t.data_loader, dataset, "train", batch_size=t.batch_size,
                               block_size=model_cfg.block_size, seed=t.seed, rank=dist.rank,
                               world_size=dist.world_size, device=device)
    tokenizer, hellaswag = evaluation_data(t, dataset)

    # ---- model and optimizer (compiled, wrapped for DDP/ZeRO-1/FSDP, FP8 as configured)
    parts = build_step_parts(config, device, dtype, dist)
    if pretrained is not None:  # the released weights replace the random init, as a resume would
        distributed.load_full_model_state(parts.model, pretrained.state_dict(), parts.strategy, dist)
        del pretrained
    model, flops = parts.model, parts.model.flops_per_token(model_cfg.block_size)

    # ---- logging and checkpoints
    run_name = t.run_name or f"{model_cfg.arch_preset}-{datetime.now():%Y%m%d-%H%M%S}"
    name = hardware.device_name(device)
    peak = hardware.run_peak_tflops(t.peak_tflops, name, dtype)
    commit = git_commit()
    logger = TrainingLogger(Path(t.out_dir) / run_name,
                            run_record(config, model, flops, name, peak, dtype, dist, commit, parts),
                            backends=t.logger_backends, enabled=dist.is_main, project=t.logger_project)
    if dist.is_main:
        print_startup(config, sources, model, flops, name, dtype, peak, train_loader, dist, parts)
    run = Run(config=config, dist=dist, strategy=parts.strategy, device=device, git_commit=commit, model=model,
              step_model=parts.step_model, optimizer=parts.optimizer, pruner=parts.pruner,
              max_iters=effective_max_iters(t), scaler=parts.scaler, autocast=parts.autocast,
              loss_settings=parts.loss_settings, dataset=dataset,
              train_loader=train_loader, accumulation_steps=parts.accumulation_steps,
              tokens_per_step=t.batch_size * model_cfg.block_size * parts.accumulation_steps * dist.world_size,
              flops_per_token=flops["total"], peak_tflops=peak, logger=logger,
              checkpoints=checkpointing.CheckpointManager(Path(t.checkpoint_dir) / run_name, t.keep_checkpoints,
                                                          t.on_checkpoint_error),
              progress=Progress(), tokenizer=tokenizer, hellaswag=hellaswag)
    if resumed:
        restore(run, resumed)
    return run


def train(run):
    t, progress = run.config.train, run.progress
    clock = checkpointing.CheckpointClock(t.checkpoint_interval, t.rolling_checkpoint_interval, t.checkpoint_minutes)
    # log lines report the steps alone: evaluation, samples and checkpoint writes are left out
    seconds_at_last_log, steps_since_log = progress.train_seconds, 0
    with GracefulShutdown() as shutdown:
        while progress.step < run.max_iters and not epochs_done(run):
            if progress.step % t.eval_interval == 0:
                evaluate(run)
            evaluate_extras(run)
            step_start = time.perf_counter()
            lr = lr_at(progress.step, t)
            set_lr(run.optimizer, lr)
            run.model.set_training_step(progress.step)  # ra_delay_steps: reciprocal parts switch on at their step
            result = train_step(run.step_model, run.optimizer, run.train_loader.next_batch, run.accumulation_steps,
                                run.autocast, t.grad_clip, run.scaler, run.pruner, histograms_due(run),
                                run.loss_settings)
            # one small all-reduce and one sync a step (one process: a wait for the forward alone): the
            # mean loss over ranks, checked every step (a NaN on any rank stops every rank), whether any
            # rank was asked to stop, and whether latest.pt is due (checkpoint_minutes reads each rank's
            # clock; all ranks must agree)
            loss, stop_requested, latest_due = step_consensus(run, result, shutdown.requested,
                                                              clock.latest_due(progress.step + 1))
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"the training loss became {loss} at step {progress.step} (lr {lr:.3g}). Lower learning_rate, "
                    f"raise warmup_iters or set grad_clip; the last good checkpoint is in {run.checkpoints.folder}.")
            progress.step += 1
            progress.tokens += run.tokens_per_step
            if run.pruner:  # before the checkpoints below, so they hold this step's masks
                run.pruner.after_step(run.optimizer, progress.step)
            log_due = (progress.step - 1) % t.log_interval == 0 or progress.step == run.max_iters
            # on a log step, wait for the whole step before reading the clock: the loss check waits for
            # the forward alone, and the backward and update still running would go untimed
            grad_norm = result.grad_norm.item() if log_due else None
            progress.train_seconds += time.perf_counter() - step_start
            steps_since_log += 1
            if log_due:
                seconds_per_step = (progress.train_seconds - seconds_at_last_log) / steps_since_log
                log_train_step(run, loss, lr, grad_norm, seconds_per_step)
                seconds_at_last_log, steps_since_log = progress.train_seconds, 0
            save_due_checkpoints(run, clock, latest=stop_requested or latest_due)
            if stop_requested:
                announce(run, f"stopped by {shutdown.requested or 'a signal to another rank'} after step "
                              f"{progress.step}; resume with:\n  python train.py --resume=latest "
                              f"--run_name={run.checkpoints.folder.name}")
                return
    evaluate(run)
    final = evaluate_extras(run, final=True)
    save_due_checkpoints(run, clock, latest=True, rolling=False)
    summary = {"steps": progress.step, "tokens": progress.tokens, "epoch": progress.epoch,
               "best_val_loss": progress.best_val_loss, "best_step": progress.best_step,
               "train_seconds": progress.train_seconds, **final, **sparsity(run)}
    if t.log_hparams:
        run.logger.log_hparams({**run.config.model.to_dict(), **dataclasses.asdict(t)}, summary)
    run.logger.finish(summary)
    announce(run, f"done: best val loss {progress.best_val_loss:.4f} at step {progress.best_step}; "
                  f"checkpoints in {run.checkpoints.folder}")


def step_consensus(run, result, *flags):
    """(mean loss over ranks, then each flag: True when any rank raised it)."""
    if run.dist.world_size == 1:  # waits for the step's forward only (StepResult.loss_value)
        return result.loss_value(), *(bool(f) for f in flags)
    loss = result.loss
    # new_full, not torch.tensor(..., device=cuda): a host-to-device copy would wait for the step
    values = torch.stack([loss.float(), *(loss.new_full((), float(bool(f)), dtype=torch.float32) for f in flags)])
    values = distributed.mean_across_ranks(values, run.dist).tolist()
    return values[0], *(value > 0 for value in values[1:])


def sparsity(run, per_layer=False):
    """Target and actual sparsity when pruning (syncs: log and eval time only)."""
    if not run.pruner:
        return {}
    report = run.pruner.sparsity_report()
    keys = ("sparsity_target", "sparsity_actual") + (("sparsity_layers",) if per_layer else ())
    return {key: report[key] for key in keys}


def announce(run, text):
    if run.dist.is_main:
        print(text, flush=True)


def evaluate(run):
    progress = run.progress
    t = run.config.train
    losses = estimate_loss(run.step_model, eval_loaders(run), t.eval_iters, run.autocast, run.loss_settings)
    train_loss, val_loss = distributed.mean_across_ranks(torch.tensor([losses["train"], losses["val"]],
                                                                      device=run.device), run.dist).tolist()
    run.logger.log({"kind": "eval", "step": progress.step, "tokens": progress.tokens, "train_loss": train_loss,
                    "val_loss": val_loss, "val_perplexity": perplexity(val_loss), **sparsity(run, per_layer=True)})
    announce(run, f"step {progress.step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                  f"val perplexity {perplexity(val_loss):.2f}")
    if val_loss < progress.best_val_loss:
        progress.best_val_loss, progress.best_step = val_loss, progress.step
        if progress.step > 0:
            record = model_record(run)
            if run.dist.is_main:
                run.checkpoints.save_best(record)


def evaluate_extras(run, final=False):
    """HellaSwag and a text sample when their interval comes round (not at step 0), and both at
    the end (final); returns the final HellaSwag numbers for the summary."""
    t, step = run.config.train, run.progress.step
    results = run_hellaswag(run) if is_due(t.hellaswag_interval, step, final) else {}
    if is_due(t.sample_interval, step, final):
        log_sample(run)
    return {f"hellaswag_{key}": value for key, value in results.items()} if final else {}


def is_due(interval, step, final):
    return interval > 0 and (final or (step > 0 and step % interval == 0))


def run_hellaswag(run):
    # the plain model: a compiled one would recompile for every example length; under FSDP the
    # plain model is the sharded one and every rank takes part
    counts = evaluate_hellaswag(run.model, run.tokenizer, run.hellaswag, run.config.model.block_size, run.device,
                                run.autocast, run.dist.rank, run.dist.world_size)
    correct, correct_norm, count = distributed.mean_across_ranks(
        torch.tensor(counts, dtype=torch.float32, device=run.device), run.dist).tolist()
    results = {"acc": correct / count, "acc_norm": correct_norm / count, "examples": len(run.hellaswag)}
    run.logger.log({"kind": "hellaswag", "step": run.progress.step, "tokens": run.progress.tokens, **results})
    announce(run, f"step {run.progress.step}: HellaSwag acc {results['acc']:.4f}, acc_norm "
                  f"{results['acc_norm']:.4f} ({len(run.hellaswag)} examples)")
    return results


def log_sample(run):
    # every rank generates (FSDP's forward needs them all); the same seed gives the same text
    t = run.config.train
    text = generate_sample(run.model, run.tokenizer, t.sample_prompt, t.sample_max_new_tokens,
                           t.sample_temperature, t.sample_top_k, run.device, seed=t.seed, autocast=run.autocast)
    run.logger.log_text("sample", text, run.progress.step)
    announce(run, f"step {run.progress.step} sample:\n{text}\n{'-' * 40}")


def histograms_due(run):
    """The gradient hook that logs histograms when histogram_interval comes round, else None."""
    t, step = run.config.train, run.progress.step + 1  # the step this update completes
    if not (run.logger.wants_histograms and t.histogram_interval and step % t.histogram_interval == 0):
        return None
    return lambda: run.logger.log_histograms(run.model, step)


def eval_loaders(run):
    # the same random windows at every evaluation (fixed seed, own generator), so evals compare
    # across steps and never disturb the training data order; each rank evaluates its own windows
    t = run.config.train
    return {split: make_loader("random", run.dataset, split, batch_size=t.batch_size,
                               block_size=run.config.model.block_size, seed=t.seed + 1, rank=run.dist.rank,
                               world_size=run.dist.world_size, device=run.device)
            for split in ("train", "val")}


def log_train_step(run, loss, lr, grad_norm, seconds_per_step):
    progress = run.progress
    tokens_per_second = run.tokens_per_step / seconds_per_step  # all ranks together
    memory = hardware.memory_stats(run.device)
    peaks = distributed.max_across_ranks(torch.tensor([memory.get(k) or 0.0 for k in memory], device=run.device),
                                         run.dist).tolist()
    event = {"kind": "train", "step": progress.step, "tokens": progress.tokens, "loss": loss, "lr": lr,
             "grad_norm": grad_norm, "step_ms": 1000 * seconds_per_step, "tokens_per_sec": tokens_per_second,
             "mfu": hardware.mfu(run.flops_per_token, tokens_per_second / run.dist.world_size, run.peak_tflops),
             "eta_seconds": (run.max_iters - progress.step) * seconds_per_step, "epoch": progress.epoch,
             "time": progress.train_seconds, **sparsity(run),
             **(run.optimizer.spam_stats() if hasattr(run.optimizer, "spam_stats") else {}),
             **{k: (v if memory[k] is not None else None) for k, v in zip(memory, peaks)}}
    run.logger.log(event)
    announce(run, format_console_line(event))


# ---------------------------------------------------------------- checkpoints
# Every rank takes part in building a training state (FSDP and ZeRO-1 gather shards, RNG states
# are gathered), and rank 0 writes it.

def epochs_done(run):
    """Tracks epoch boundaries (writing epoch checkpoints) and says whether max_epochs is reached."""
    progress, t = run.progress, run.config.train
    epoch = getattr(run.train_loader, "epoch", None)
    if epoch is None:  # random windows: an epoch is as many tokens as the training split holds
        epoch = progress.tokens // run.dataset.train_tokens
    if epoch > progress.epoch:
        progress.epoch = epoch
        if t.save_epoch_checkpoints:
            write(run, run.checkpoints.save_epoch, training_state(run), epoch)
    return t.max_epochs is not None and progress.epoch >= t.max_epochs


def save_due_checkpoints(run, clock, latest, rolling=None):
    """latest.pt when asked, a rolling checkpoint when its interval comes round (or as asked); the
    training state (a gather of every rank's shards under FSDP and ZeRO-1) is built once for both."""
    step = run.progress.step
    rolling = clock.rolling_due(step) if rolling is None else rolling
    if not (latest or rolling):
        return
    state = training_state(run)
    if latest:
        write(run, run.checkpoints.save_latest, state)
        clock.mark_latest_written()
    if rolling:
        write(run, run.checkpoints.save_rolling, state, step)


def write(run, save, state, *args):
    if run.dist.is_main:
        save(state, *args)
    distributed.barrier(run.dist)  # no rank runs ahead of a checkpoint it might be killed after


def model_record(run):
    """Weights plus what is needed to rebuild and decode: best_model.pt, and part of every checkpoint."""
    progress = run.progress
    weights = distributed.full_model_state(run.model, run.strategy, run.dist)
    return {"model": checkpointing.clean_state_dict(weights),
            "model_config": run.config.model.to_dict(), "arch_name": run.config.model.arch_name,
            "step": progress.step, "tokens": progress.tokens, "val_loss": progress.best_val_loss,
            "tokenizer": {k: run.dataset.meta[k] for k in ("tokenizer", "vocab_size", "chars") if k in run.dataset.meta}}


def training_state(run):
    return {**model_record(run), "format_version": checkpointing.FORMAT_VERSION,
            "config": run.config.to_dict(), "world_size": run.dist.world_size, "strategy": run.strategy,
            "optimizer": distributed.full_optimizer_state(run.model, run.optimizer, run.strategy, run.dist),
            "scaler": run.scaler.state_dict() if run.scaler else None,
            "pruning": run.pruner.state_dict() if run.pruner else None,
            "progress": dataclasses.asdict(run.progress), "epoch": run.progress.epoch,
            "best_val_loss": run.progress.best_val_loss, "data_loader": run.train_loader.state_dict(),
            "rng": distributed.gather_objects(checkpointing.rng_state(), run.dist), "git_commit": run.git_commit,
            "saved_at": datetime.now().isoformat(timespec="seconds")}


def restore(run, checkpoint):
    distributed.load_full_model_state(run.model, checkpointing.clean_state_dict(checkpoint["model"]),
                                      run.strategy, run.dist)
    if "optimizer" not in checkpoint:  # best_model.pt: weights only
        announce(run, "WARNING: this checkpoint holds weights only; the optimizer and data order start fresh.")
        run.progress = Progress(step=checkpoint["step"], tokens=checkpoint.get("tokens", 0))
        return
    distributed.load_full_optimizer_state(run.model, run.optimizer, checkpoint["optimizer"], run.strategy, run.dist)
    if run.pruner and checkpoint.get("pruning"):
        run.pruner.load_state_dict(checkpoint["pruning"])
    if run.scaler and checkpoint["scaler"]:
        run.scaler.load_state_dict(checkpoint["scaler"])
    run.train_loader.load_state_dict(checkpoint["data_loader"])
    run.progress = Progress(**checkpoint["progress"])
    saved_ranks = len(checkpoint["rng"])
    if saved_ranks == run.dist.world_size:
        checkpointing.set_rng_state(checkpoint["rng"][run.dist.rank])
    else:
        position = ("global windows consumed" if run.config.train.data_loader == "sequential"
                    else "each rank replays its own random windows")
        announce(run, f"resuming {saved_ranks} rank(s) on {run.dist.world_size}: the data position is kept "
                      f"({position}); dropout RNG streams restart from the seed.")


def resume_candidates(config):
    t = config.train
    if t.resume not in ("latest", "best"):
        return [Path(t.resume)]
    if not t.run_name:
        runs = sorted(p.name for p in Path(t.checkpoint_dir).glob("*") if p.is_dir())
        raise ConfigError(f"resume={t.resume!r} needs --run_name=NAME to know which run; runs in "
                          f"{t.checkpoint_dir}/: {', '.join(runs) or 'none'}.")
    return checkpointing.resume_candidates(Path(t.checkpoint_dir) / t.run_name, t.resume)


def list_checkpoints(argv):
    run_name = next((a.split("=", 1)[1] for a in argv if a.startswith(("--run_name=", "--run="))), None)
    root = Path(next((a.split("=", 1)[1] for a in argv if a.startswith("--checkpoint_dir=")), "checkpoints"))
    folders = [root / run_name] if run_name else sorted(p for p in root.glob("*") if p.is_dir())
    for folder in folders:
        rows = checkpointing.describe_checkpoints(folder)
        print(f"{folder}:")
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


# ---------------------------------------------------------------- setup helpers

def explicit_model_options(model_cfg, sources):
    """ModelConfig values set in a config file or on the command line (not defaults or preset values)."""
    fields = {f.name for f in dataclasses.fields(model_cfg)}
    return {key: getattr(model_cfg, key) for key in explicit_keys(sources) if key in fields}


def fit_vocab(model_cfg, dataset_vocab, sources, pad):
    """The dataset decides the vocabulary unless vocab_size was set by hand; padding to a multiple
    of 64 makes the embedding and LM-head matmuls tensor-core friendly (50257 -> 50304)."""
    if "vocab_size" in explicit_keys(sources):
        if model_cfg.vocab_size < dataset_vocab:
            raise ConfigError(f"vocab_size={model_cfg.vocab_size} is smaller than the dataset's vocabulary "
                              f"of {dataset_vocab} tokens; remove the setting or raise it.")
        return model_cfg
    vocab = 64 * math.ceil(dataset_vocab / 64) if pad else dataset_vocab
    return dataclasses.replace(model_cfg, vocab_size=vocab)


def evaluation_data(t, dataset):
    """The tokenizer (for samples and HellaSwag) and the HellaSwag examples, as configured."""
    if not (t.sample_interval or t.hellaswag_interval):
        return None, []
    tokenizer = tokenizer_from_meta(dataset.meta)
    if not t.hellaswag_interval:
        return tokenizer, []
    if tokenizer.name != "gpt2":
        raise ConfigError(f"hellaswag_interval={t.hellaswag_interval} needs a dataset in GPT-2 tokens, but "
                          f"{t.dataset} uses the {tokenizer.name!r} tokenizer (HellaSwag's text has characters "
                          "outside it). Set hellaswag_interval=0, or train on a GPT-2 tokenized dataset.")
    return tokenizer, load_hellaswag(hellaswag_file(t.hellaswag_path, t.hellaswag_cache_dir), t.hellaswag_examples)


def run_record(config, model, flops, device_name, peak, dtype, dist, commit, parts):
    """What the run is: its config, and what the config's auto settings resolved to on this device."""
    return {"config": config.to_dict(), "arch_name": config.model.arch_name, "world_size": dist.world_size,
            "compile_mode": parts.compile_mode, "dependent_launch": parts.dependent_launch,
            "optimizer_class": optimizer_class(parts.optimizer),
            "fp8_lm_head": parts.loss_settings.fp8,
            "effective_max_iters": effective_max_iters(config.train),
            "params": model.num_params(non_embedding=False),
            "params_non_embedding": model.num_params(non_embedding=True),
            "flops_per_token": flops, "device_name": device_name, "dtype": dtype, "peak_tflops": peak,
            "torch_version": torch.__version__, "git_commit": commit,
            "started": datetime.now().isoformat(timespec="seconds")}


def optimizer_class(optimizer):
    """The optimizer's class by module and name: torch.optim.adamw.AdamW, fused_adamw.AdamW, ..."""
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"


def print_startup(config, sources, model, flops, device_name, dtype, peak, train_loader, dist, parts):
    print(f"architecture {config.model.arch_name}: {model.num_params(non_embedding=False):,} parameters "
          f"({model.num_params():,} non-embedding)")
    print("configuration (differences from the defaults):")
    print("\n".join(describe_changes(config, sources)) or "  none")
    parallel = f", {dist.world_size} ranks ({parts.strategy})" if dist.enabled else ""
    print(f"device {device_name}, dtype {dtype}, gradient accumulation {parts.accumulation_steps}{parallel}")
    launch = " with dependent launch" if parts.dependent_launch else ""
    print(f"step: torch.compile {parts.compile_mode or 'off'}{launch}; {parts.loss_settings.describe()}; "
          f"optimizer {optimizer_class(parts.optimizer)}")
    steps_per_epoch = getattr(train_loader, "steps_per_epoch", None)
    if steps_per_epoch:
        print(f"sequential data: {steps_per_epoch // parts.accumulation_steps} optimizer steps per epoch")
    t = config.train
    if effective_max_iters(t) != t.max_iters:
        print(f"bitter2: training {effective_max_iters(t)} steps = max_iters {t.max_iters} x bitter2_scale "
              f"{t.bitter2_scale} (spends the compute sparsity saves; compare at equal compute, not equal steps)")
    pruner = parts.pruner
    if pruner:
        print(f"pruning: {pruner.method}, sparsity 0 at step {pruner.warmup} -> {pruner.target_sparsity} at step "
              f"{pruner.ramp_end} ({pruner.schedule}), masks every {pruner.frequency} steps")
    breakdown = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in flops.items() if k != "total")
    print(f"training FLOPs/token {flops['total'] / 1e6:.2f}M ({breakdown})")
    if peak:
        print(f"MFU = FLOPs/token x tokens/s per device / {peak} TFLOPS ({dtype} dense peak); "
              f"model FLOPs from the architecture-aware count (PaLM-style MFU)")
    else:
        print(hardware.mfu_unavailable_message(device_name))


if __name__ == "__main__":
    main(sys.argv[1:])
