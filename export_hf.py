"""Export a trained run as a Hugging Face model folder.

    python export_hf.py --run=NAME [--which=latest|best] [--checkpoints_dir=checkpoints] [--out=DIR]
    python export_hf.py --checkpoint=PATH --out=DIR

Writes config.json and model.safetensors (GPT2LMHeadModel for learned positions, LlamaForCausalLM
for RoPE), plus GPT-2's tokenizer files when the run used the gpt2 tokenizer; then
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(DIR)
Architectures neither family can express (post-norm, QK-norm, ...) are refused with the reasons,
and nothing is written. The default --out is exports/<run> (or exports/<checkpoint file stem>).
"""
import argparse
import sys
from pathlib import Path

from checkpointing import BEST, LATEST, load_checkpoint
from hf_interop import to_hf
from model_config import ConfigError
from sample import model_from_checkpoint
from token_shards import DataError


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run name: reads <checkpoints_dir>/<run>/latest.pt or best_model.pt")
    source.add_argument("--checkpoint", help="path to a .pt checkpoint file")
    parser.add_argument("--which", choices=("latest", "best"), default="latest", help="with --run (default: latest)")
    parser.add_argument("--checkpoints_dir", default="checkpoints")
    parser.add_argument("--out", help="output folder (default: exports/<run or checkpoint name>)")
    return parser.parse_args(argv)


def checkpoint_path(args):
    if args.checkpoint:
        return Path(args.checkpoint)
    return Path(args.checkpoints_dir) / args.run / (LATEST if args.which == "latest" else BEST)


def export(path, out_dir):
    checkpoint = load_checkpoint(path)
    return to_hf(model_from_checkpoint(checkpoint), out_dir, checkpoint.get("tokenizer")), checkpoint


def main(argv):
    args = parse_args(argv)
    path = checkpoint_path(args)
    if not path.is_file():
        sys.exit(f"Error: no checkpoint at {path}. Pass --run=NAME of a folder in {args.checkpoints_dir}/ "
                 f"(--which=latest|best) or --checkpoint=PATH.")
    out_dir = Path(args.out) if args.out else Path("exports") / (args.run or path.stem)
    try:
        out_dir, checkpoint = export(path, out_dir)
    except (ConfigError, DataError) as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)
    files = ", ".join(sorted(p.name for p in out_dir.iterdir()))
    print(f"exported {checkpoint.get('arch_name', 'the model')} (step {checkpoint.get('step', '?')}) from {path} "
          f"to {out_dir}: {files}")
    if checkpoint.get("tokenizer", {}).get("tokenizer") != "gpt2":
        print(f"no tokenizer files: the run's tokenizer ({checkpoint.get('tokenizer', {}).get('tokenizer', 'unknown')}) "
              f"has no Hugging Face counterpart; encode text the way the run's dataset was prepared.")


if __name__ == "__main__":
    main(sys.argv[1:])
