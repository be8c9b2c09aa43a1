"""Tiny Shakespeare (1.1 MB of plays) in GPT-2 tokens, as nanoGPT's shakespeare.

    python data/shakespeare/prepare.py [--input PATH] [--out_dir DIR]

Without --input, Tiny Shakespeare is downloaded once into the output folder as input.txt. The first 90%
of the tokens become train.bin and the rest val.bin (the text starts with GPT-2's <|endoftext|>, as
every document does here).
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for token_shards and tokenizer

from data.shakespeare_char.prepare import main, prepare as prepare_shakespeare

HERE = Path(__file__).resolve().parent


def prepare(input_path=None, out_dir=HERE):
    """Writes Tiny Shakespeare (input_path, or downloaded when None) as a GPT-2 token dataset in out_dir."""
    return prepare_shakespeare(input_path, out_dir, tokenizer="gpt2")


if __name__ == "__main__":
    main(prepare, HERE, __doc__)
