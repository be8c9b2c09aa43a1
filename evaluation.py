"""Evaluation: loss estimates on held-out and training data, HellaSwag, and text samples.

HellaSwag (Zellers et al. 2019) on its validation split, scored completion style as in the
reference implementation (Karpathy's llm.c/build-nanogpt hellaswag.py; lm-evaluation-harness
normalises acc_norm by characters instead, so its figures differ):
the model reads the context followed by each of the 4 candidate endings (" " + ending) and we
sum the log-probabilities of the ending's tokens.
  acc       the ending with the highest summed log-likelihood is the prediction
  acc_norm  the ending with the highest mean log-likelihood per ending token is the prediction
            (length-normalised; the figure usually quoted for GPT-2, e.g. 0.2955 for 124M)

Standalone, on a checkpoint:
    python evaluation.py --checkpoint=checkpoints/NAME/best_model.pt --hellaswag_examples=1000
"""
import argparse
import contextlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

import hardware
from linear_cross_entropy import LossSettings
from sample import generate_samples, load_model
from token_shards import DataError, download_once

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_CACHE_DIR = Path("~/.cache/gpt-workbench/hellaswag")
HELLASWAG_ENDINGS = 4


@torch.no_grad()
def estimate_loss(model, loaders, eval_iters, autocast, loss_settings=LossSettings()):
    """Mean loss over eval_iters batches of each loader ({split name: loader}), model in eval mode."""
    was_training = model.training
    model.eval()
    losses = {}
    for split, loader in loaders.items():
        total = 0.0
        for _ in range(eval_iters):
            x, y = loader.next_batch()
            with autocast:
                loss = model(x, y, loss_settings=loss_settings)[1]
            total = total + loss.float()  # stays on the device: one sync per split, not per batch
        losses[split] = (total / eval_iters).item()
    model.train(was_training)
    return losses


def perplexity(loss):
    return math.exp(loss) if loss < 700 else float("inf")


# ---------------------------------------------------------------- HellaSwag data

@dataclass(frozen=True)
class HellaSwagExample:
    ctx: str
    endings: tuple  # 4 candidate continuations
    label: int  # index of the right one


def hellaswag_file(path=None, cache_dir=HELLASWAG_CACHE_DIR):
    """The validation file: path when given, else cache_dir/hellaswag_val.jsonl, downloaded once."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"hellaswag_path={str(path)!r} does not exist. Give the path of a local "
                            f"hellaswag_val.jsonl, or leave hellaswag_path unset to download it from {HELLASWAG_URL}.")
        return path
    cached = Path(cache_dir).expanduser() / "hellaswag_val.jsonl"
    return download_once(HELLASWAG_URL, cached, f"Download it some other way and set hellaswag_path to the file, "
                                                f"or put it at {cached}.")


def load_hellaswag(path, limit=None):
    """The first limit examples (all when None) of a file in the official jsonl format; a
    malformed line is a DataError naming the file and the line number."""
    examples = []
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if limit is not None and len(examples) >= limit:
                break
            if line.strip():
                examples.append(_parse_hellaswag_line(line, path, line_number))
    return examples


def _parse_hellaswag_line(line, path, line_number):
    where = f"{path}, line {line_number}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON ({error.msg} at column {error.colno}). Each line of a "
                        "HellaSwag file is one JSON object; download the file again.") from None
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object with ctx, endings and label, got {type(item).__name__}.")
    ctx = item.get("ctx")
    if ctx is None and isinstance(item.get("ctx_a"), str) and isinstance(item.get("ctx_b"), str):
        ctx = (item["ctx_a"] + " " + item["ctx_b"]).strip()  # how the official files build ctx
    endings, label = item.get("endings"), item.get("label")
    if isinstance(label, str) and label.isdigit():
        label = int(label)
    if not isinstance(ctx, str) or not ctx:
        raise DataError(f"{where}: 'ctx' (or 'ctx_a' and 'ctx_b') must be a non-empty string, got {ctx!r}.")
    if not (isinstance(endings, list) and len(endings) == HELLASWAG_ENDINGS and all(isinstance(e, str) for e in endings)):
        raise DataError(f"{where}: 'endings' must be a list of {HELLASWAG_ENDINGS} strings, got {endings!r}.")
    if not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label < HELLASWAG_ENDINGS):
        raise DataError(f"{where}: 'label' must be an integer from 0 to {HELLASWAG_ENDINGS - 1}, got {label!r}.")
    return HellaSwagExample(ctx=ctx, endings=tuple(endings), label=label)


# ---------------------------------------------------------------- HellaSwag scoring

class HellaSwagCounts(NamedTuple):
    """Sums over the examples one rank scored; all-reduce them (or their means) across ranks,
    then acc = correct / count and acc_norm = correct_norm / count."""
    correct: int
    correct_norm: int
    count: int


def ending_batch(ctx_tokens, endings_tokens, block_size):
    """Inputs, targets and a mask of the ending's target positions for the 4 endings as one
    right-padded batch. Each row is context + ending, cut from the left to block_size + 1 tokens
    (block_size predictions); positions without an ending token have mask 0."""
    rows, ending_lengths = [], []
    for ending_tokens in endings_tokens:
        row = (ctx_tokens + ending_tokens)[-(block_size + 1):]
        rows.append(row)
        ending_lengths.append(min(len(ending_tokens), len(row) - 1))
    width = max(len(row) for row in rows) - 1
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width)
    for i, (row, ending_length) in enumerate(zip(rows, ending_lengths)):
        inputs[i, :len(row) - 1] = torch.tensor(row[:-1])
        targets[i, :len(row) - 1] = torch.tensor(row[1:])
        mask[i, len(row) - 1 - ending_length:len(row) - 1] = 1.0
    return inputs, targets, mask


@torch.no_grad()
def ending_log_likelihoods(model, tokenizer, example, block_size, device, autocast=contextlib.nullcontext()):
    """(summed, mean per token) log-likelihood of each ending after the context: two tensors of 4.
    One forward pass; causal attention means the right padding changes no scored position."""
    ctx_tokens = tokenizer.encode(example.ctx)
    endings_tokens = [tokenizer.encode(" " + ending) for ending in example.endings]
    inputs, targets, mask = (t.to(device) for t in ending_batch(ctx_tokens, endings_tokens, block_size))
    with autocast:
        logits, _ = model(inputs)
    log_probs = F.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    summed = (log_probs * mask).sum(dim=1)
    return summed, summed / mask.sum(dim=1)


@torch.no_grad()
def evaluate_hellaswag(model, tokenizer, examples, block_size, device, autocast=contextlib.nullcontext(),
                       rank=0, world_size=1):
    """HellaSwagCounts over this rank's share of examples (every world_size-th, from rank).

    Every rank runs the same number of forward passes (the last round is padded with a repeated,
    uncounted example) so that FSDP's collectives inside forward stay in step across ranks. Pass
    the plain model, not a compiled one: each example has its own length."""
    was_training = model.training
    model.eval()
    predictions, labels = [], []  # read back once at the end: a sync per example would stall the GPU
    rounds = math.ceil(len(examples) / world_size)
    for index in range(rank, rounds * world_size, world_size):
        example = examples[index % len(examples)]
        summed, mean = ending_log_likelihoods(model, tokenizer, example, block_size, device, autocast)
        if index < len(examples):
            predictions.append(torch.stack((summed.argmax(), mean.argmax())))
            labels.append(example.label)
    model.train(was_training)
    predicted = torch.stack(predictions).tolist() if predictions else []
    correct = sum(by_sum == label for (by_sum, _), label in zip(predicted, labels))
    correct_norm = sum(by_mean == label for (_, by_mean), label in zip(predicted, labels))
    return HellaSwagCounts(correct, correct_norm, len(labels))


# ---------------------------------------------------------------- text samples

@torch.no_grad()
def generate_sample(model, tokenizer, prompt, max_new_tokens, temperature, top_k, device, seed=1337,
                    autocast=contextlib.nullcontext()):
    """The prompt and max_new_tokens generated after it, as text. Sampling uses its own seeded
    random stream, so the samples of successive evaluations are comparable and the training run's
    random state (dropout, data order) is the same whether samples are taken or not. Pass the
    training step's autocast: a model trained with a bf16 residual stream needs it."""
    was_training = model.training
    model.eval()
    cuda_devices = [device] if str(device).startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda_devices), autocast:
        torch.manual_seed(seed)
        text = generate_samples(model, tokenizer, prompt, 1, max_new_tokens, temperature, top_k, device)[0]
    model.train(was_training)
    return text


# ---------------------------------------------------------------- standalone HellaSwag

def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by train.py")
    parser.add_argument("--hellaswag_examples", type=int, default=None, help="the first N examples (default: all)")
    parser.add_argument("--hellaswag_path", default=None, help="a local hellaswag_val.jsonl (default: download)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        sys.exit(f"Error: no checkpoint at {args.checkpoint}.")
    device = hardware.pick_device(args.device)
    autocast = hardware.autocast_context(device, hardware.pick_dtype("auto", device))
    try:
        model, tokenizer = load_model(args.checkpoint, device)
        examples = load_hellaswag(hellaswag_file(args.hellaswag_path), args.hellaswag_examples)
        counts = evaluate_hellaswag(model, tokenizer, examples, model.config.block_size, device, autocast)
    except DataError as error:
        sys.exit(f"Error: {error}")
    if not counts.count:
        sys.exit("Error: no HellaSwag examples to score (hellaswag_examples must be at least 1).")
    print(f"HellaSwag on {counts.count} examples: acc {counts.correct / counts.count:.4f}, "
          f"acc_norm {counts.correct_norm / counts.count:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
