"""Tiny Shakespeare (1.1 MB of plays) at the character level: 65 tokens, as nanoGPT's shakespeare_char.

    python data/shakespeare_char/prepare.py [--input PATH] [--out_dir DIR]

Without --input, Tiny Shakespeare is downloaded once into the output folder as input.txt. The first 90%
of the text becomes train.bin and the rest val.bin. data/shakespeare/prepare.py reuses this script
with the GPT-2 tokenizer.
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for token_shards and tokenizer

import argparse

from data.text.prepare import prepare as prepare_text, run_and_report
from token_shards import download_once

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
HERE = Path(__file__).resolve().parent


def prepare(input_path=None, out_dir=HERE, tokenizer="char"):
    """Writes Tiny Shakespeare (input_path, or downloaded when None) as a dataset in out_dir."""
    if input_path is None:
        input_path = Path(out_dir) / "input.txt"
        download_once(TINY_SHAKESPEARE_URL, input_path,
                      "Download it some other way and pass the file with --input PATH.")
    # one document, so one worker: more processes would only add start-up time
    return prepare_text([input_path], out_dir, tokenizer=tokenizer, val_fraction=0.1, num_proc=1)


def main(prepare_function, default_out_dir, description):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=None,
                        help="a local copy of Tiny Shakespeare's input.txt (default: download it)")
    parser.add_argument("--out_dir", type=Path, default=default_out_dir, help="the dataset folder to write")
    args = parser.parse_args()
    run_and_report(prepare_function, input_path=args.input, out_dir=args.out_dir)


if __name__ == "__main__":
    main(prepare, HERE, __doc__)
