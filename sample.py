"""Generate text from a trained run.

    python sample.py --run=NAME --start="ROMEO:" --num_samples=3 --max_new_tokens=200
    python sample.py --checkpoint=checkpoints/NAME/best_model.pt --start=FILE:prompt.txt
"""
import argparse
import sys
from pathlib import Path

import torch

import hardware
from checkpointing import BEST, LATEST, clean_state_dict, load_checkpoint
from model_builder import build_model
from model_config import ModelConfig
from tokenizer import tokenizer_from_meta


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run name: reads checkpoints/<run>/<checkpoint>.pt")
    parser.add_argument("--checkpoint", default="latest",
                        help="latest | best | a path to a .pt file (default: latest)")
    parser.add_argument("--checkpoints_dir", default="checkpoints")
    parser.add_argument("--start", default="\n", help="prompt text, or FILE:path to read it from a file")
    parser.add_argument("--num_samples", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 picks the most likely token")
    parser.add_argument("--top_k", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def checkpoint_path(args):
    named = {"latest": LATEST, "best": BEST}
    if args.checkpoint in named:
        if not args.run:
            sys.exit(f"Error: --checkpoint={args.checkpoint} needs --run=NAME (a folder in {args.checkpoints_dir}/), "
                     f"or pass --checkpoint=PATH.")
        return Path(args.checkpoints_dir) / args.run / named[args.checkpoint]
    return Path(args.checkpoint)


def prompt_text(start):
    if start.startswith("FILE:"):
        return Path(start[len("FILE:"):]).read_text(encoding="utf-8")
    return start


def model_from_checkpoint(checkpoint):
    """The plain GPT a checkpoint (as load_checkpoint returns it) holds, on the CPU."""
    model = build_model(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(clean_state_dict(checkpoint["model"]))
    return model


def load_model(path, device):
    checkpoint = load_checkpoint(path)
    return model_from_checkpoint(checkpoint).to(device).eval(), tokenizer_from_meta(checkpoint["tokenizer"])


def generate_samples(model, tokenizer, prompt, num_samples, max_new_tokens, temperature, top_k, device):
    ids = tokenizer.encode(prompt) or [0]
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, vocab_size=tokenizer.vocab_size)
    return [tokenizer.decode(row.tolist()) for row in out]


def main(argv):
    args = parse_args(argv)
    path = checkpoint_path(args)
    if not path.is_file():
        sys.exit(f"Error: no checkpoint at {path}. Train first (python train.py ...) or pass --checkpoint=PATH.")
    device = hardware.pick_device(args.device)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(path, device)
    samples = generate_samples(model, tokenizer, prompt_text(args.start), args.num_samples, args.max_new_tokens,
                               args.temperature, args.top_k, device)
    for text in samples:
        print(text)
        print("-" * 40)


if __name__ == "__main__":
    main(sys.argv[1:])
