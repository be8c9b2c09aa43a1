"""FineWeb-Edu (sample-10BT: about 10B GPT-2 tokens of educational web pages) as GPT-2 token shards,
the way build-nanogpt prepares it.

    python data/fineweb_edu/prepare.py [--max_tokens N] [--shard_tokens N] [--num_proc N] [--out_dir DIR]
    python data/fineweb_edu/prepare.py --input pages.jsonl more/ --max_tokens 1000000 --shard_tokens 100000

Documents stream from the Hugging Face hub (nothing is downloaded in full), or come from local
.jsonl/.parquet/.txt files with --input. Worker processes tokenize them with <|endoftext|> before
each document, and the tokens go into shards of --shard_tokens tokens: the first shard is val, the
rest train. The full sample needs about 20 GB of disk; --max_tokens stops after a slice.
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for token_shards and tokenizer

import argparse
from contextlib import closing

from tqdm import tqdm

from data.text.prepare import DEFAULT_NUM_PROC, encode_documents, find_text_files, read_documents, run_and_report
from token_shards import DataError, write_dataset
from tokenizer import GPT2Tokenizer

HERE = Path(__file__).resolve().parent


def prepare(out_dir=HERE, inputs=None, shard_tokens=100_000_000, max_tokens=None, num_proc=DEFAULT_NUM_PROC,
            text_field="text"):
    """Writes FineWeb-Edu (or the local files in inputs) as GPT-2 token shards in out_dir."""
    if max_tokens is not None and max_tokens <= shard_tokens:
        raise DataError(f"max_tokens={max_tokens} leaves nothing for training: the first shard_tokens="
                        f"{shard_tokens} tokens are the val split. Use max_tokens > shard_tokens.")
    tokenizer = GPT2Tokenizer()
    documents = read_documents(find_text_files(inputs), text_field) if inputs else stream_fineweb_edu()
    with closing(encode_documents(documents, tokenizer, num_proc)) as document_tokens, \
            tqdm(total=max_tokens, unit="tokens", unit_scale=True, desc="tokenizing") as progress:
        val, train = split_stream(limit_tokens(document_tokens, max_tokens, progress), shard_tokens)
        return write_dataset(out_dir, train, val, tokenizer.meta, shard_tokens)


def stream_fineweb_edu():
    try:
        import datasets
    except ImportError:
        raise DataError("Streaming FineWeb-Edu needs the datasets package, which is not installed. Install it "
                        "with: pip install datasets (or give local files with --input).") from None
    stream = datasets.load_dataset("HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train", streaming=True)
    return (document["text"] for document in stream)


def limit_tokens(token_arrays, max_tokens, progress):
    """The token arrays, cut off after max_tokens tokens in all (None: all of them), counted on progress."""
    remaining = sys.maxsize if max_tokens is None else max_tokens
    for tokens in token_arrays:
        tokens = tokens[:remaining]
        remaining -= len(tokens)
        progress.update(len(tokens))
        yield tokens
        if remaining == 0:
            return


def split_stream(token_arrays, head_tokens):
    """(head, tail): the first head_tokens tokens of one stream of arrays, and the rest.

    Both are generators over the same stream, so head must be used up before tail starts.
    """
    token_arrays = iter(token_arrays)
    cut_off = []

    def head():
        remaining = head_tokens
        for tokens in token_arrays:
            yield tokens[:remaining]
            if len(tokens) >= remaining:
                cut_off.append(tokens[remaining:])
                return
            remaining -= len(tokens)

    def tail():
        yield from cut_off
        yield from token_arrays

    return head(), tail()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", default=None,
                        help="local .jsonl/.parquet/.txt files or folders instead of streaming FineWeb-Edu")
    parser.add_argument("--out_dir", type=Path, default=HERE, help="the dataset folder to write")
    parser.add_argument("--shard_tokens", type=int, default=100_000_000, help="tokens per shard file")
    parser.add_argument("--max_tokens", type=int, default=None, help="stop after this many tokens (default: all)")
    parser.add_argument("--num_proc", type=int, default=DEFAULT_NUM_PROC, help="tokenizer worker processes")
    parser.add_argument("--text_field", default="text", help="the .jsonl field / .parquet column of the text")
    args = parser.parse_args()
    run_and_report(prepare, out_dir=args.out_dir, inputs=args.input, shard_tokens=args.shard_tokens,
                   max_tokens=args.max_tokens, num_proc=args.num_proc, text_field=args.text_field)


if __name__ == "__main__":
    main()
