"""Prepares a dataset from local text files, and holds the reading and tokenizing code the other
data/*/prepare.py scripts share.

    python data/text/prepare.py --input notes.txt books/ more.jsonl --out_dir data/mytext [--tokenizer char]

Accepted inputs (a folder stands for all such files under it): .txt (the whole file is one document),
.jsonl (one JSON object per line, the document in its --text_field) and .parquet (one document per row,
in the --text_field column; needs pyarrow). With the char tokenizer the vocabulary is every character
of the text. Several documents are split between documents, the last ones (about --val_fraction of the
tokens) going to val; a single document is cut at 1 - val_fraction of its tokens, as nanoGPT does.
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for token_shards and tokenizer

import argparse
import json
import multiprocessing
import os
from contextlib import closing

import numpy as np

from token_shards import DataError, check_vocab_size, write_dataset
from tokenizer import TOKENIZERS, CharTokenizer, get_tokenizer, tokenizer_from_meta

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
DEFAULT_NUM_PROC = max(1, (os.cpu_count() or 2) // 2)


def prepare(inputs, out_dir, tokenizer="gpt2", val_fraction=0.1, shard_tokens=None, text_field="text",
            num_proc=DEFAULT_NUM_PROC):
    """Tokenizes the text files or folders in inputs into a dataset in out_dir; returns its DatasetInfo."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction!r} is not accepted: use a fraction between 0 and 1 "
                        "(exclusive), e.g. 0.1 for 10% validation tokens.")
    paths = find_text_files(inputs)
    if tokenizer == "char":
        # the vocabulary needs all the text first, so the files are read twice rather than held in memory
        tokenizer = CharTokenizer(set().union(*map(set, read_documents(paths, text_field))))
    else:
        tokenizer = get_tokenizer(tokenizer)
    check_vocab_size(tokenizer.vocab_size)
    with closing(encode_documents(read_documents(paths, text_field), tokenizer, num_proc)) as documents:
        document_tokens = list(documents)
    train, val = split_train_val(document_tokens, val_fraction)
    return write_dataset(out_dir, train, val, tokenizer.meta, shard_tokens)


def split_train_val(document_tokens, val_fraction):
    """(train, val) lists of token arrays, val holding about val_fraction of the tokens, from the end."""
    if len(document_tokens) == 1:
        tokens = document_tokens[0]
        cut = int(len(tokens) * (1 - val_fraction))
        return [tokens[:cut]], [tokens[cut:]]
    wanted_val_tokens = val_fraction * sum(len(tokens) for tokens in document_tokens)
    first_val, val_tokens = len(document_tokens), 0
    while first_val > 1 and val_tokens < wanted_val_tokens:
        first_val -= 1
        val_tokens += len(document_tokens[first_val])
    return document_tokens[:first_val], document_tokens[first_val:]


# ----------------------------------------------------------------------------- reading text

def find_text_files(inputs):
    """The text files named by inputs (files or folders), in a stable order."""
    paths = []
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"The folder {path} holds no {', '.join(TEXT_SUFFIXES)} files to read.")
            paths += found
        elif not path.is_file():
            raise DataError(f"The input {path} does not exist. Give existing files or folders.")
        elif path.suffix not in TEXT_SUFFIXES:
            raise DataError(f"The input {path} has the suffix {path.suffix!r}, which is not read. "
                            f"Accepted: {', '.join(TEXT_SUFFIXES)} files, or folders holding them.")
        else:
            paths.append(path)
    if not paths:
        raise DataError("No input files were given. Name text files or folders, e.g. --input notes.txt books/.")
    return paths


def read_documents(paths, text_field="text"):
    """Yields the text of each document in the files, in order."""
    for path in paths:
        try:
            if path.suffix == ".txt":
                yield path.read_text(encoding="utf-8")
            elif path.suffix == ".jsonl":
                yield from _jsonl_documents(path, text_field)
            else:
                yield from _parquet_documents(path, text_field)
        except UnicodeDecodeError as error:
            raise DataError(f"{path} is not UTF-8 text ({error}). Convert it to UTF-8 first.") from None


def _jsonl_documents(path, text_field):
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number} is not valid JSON ({error}). A .jsonl file needs one "
                                "JSON object per line.") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                fields = ", ".join(record) if isinstance(record, dict) else "none, it is not a JSON object"
                raise DataError(f"{path}:{line_number} has no text in the field {text_field!r} (fields: {fields}). "
                                "Name the field holding the documents with --text_field.")
            yield record[text_field]


def _parquet_documents(path, text_field):
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataError(f"Reading {path} needs the pyarrow package, which is not installed. "
                        "Install it with: pip install pyarrow") from None
    table = parquet.ParquetFile(path)
    if text_field not in table.schema_arrow.names:
        raise DataError(f"{path} has no column {text_field!r} (its columns: {', '.join(table.schema_arrow.names)}). "
                        "Name the column holding the documents with --text_field.")
    rows = (text for batch in table.iter_batches(columns=[text_field]) for text in batch.column(0).to_pylist())
    for row_number, text in enumerate(rows, 1):
        if not isinstance(text, str):
            raise DataError(f"{path} row {row_number} has no text in the column {text_field!r} (it holds {text!r}).")
        yield text


# ----------------------------------------------------------------------------- tokenizing

def encode_documents(documents, tokenizer, num_proc):
    """Yields each document's tokens as a uint16 array, in order, encoded by num_proc worker processes.

    GPT-2 puts its <|endoftext|> token before every document, as llm.c and build-nanogpt do, so the
    model sees where one document ends and the next begins.
    """
    if not isinstance(num_proc, int) or num_proc < 1:
        raise DataError(f"num_proc={num_proc!r} is not accepted: use at least 1 tokenizer worker process.")
    with multiprocessing.Pool(num_proc, initializer=_load_worker_tokenizer, initargs=(tokenizer.meta,)) as pool:
        yield from pool.imap(_encode_document, documents, chunksize=16)


_worker_tokenizer = None


def _load_worker_tokenizer(tokenizer_meta):
    global _worker_tokenizer
    _worker_tokenizer = tokenizer_from_meta(tokenizer_meta)


def _encode_document(text):
    ids = _worker_tokenizer.encode(text)
    if _worker_tokenizer.eot_token is not None:
        ids = [_worker_tokenizer.eot_token] + ids
    return np.array(ids, dtype=np.uint16)


# ----------------------------------------------------------------------------- command line

def run_and_report(prepare_function, **options):
    """Runs a prepare function for a command line: a summary when it works, the error and status 1 if not."""
    try:
        info = prepare_function(**options)
    except DataError as error:
        sys.exit(f"error: {error}")
    print(f"{info.path}: {info.train_tokens:,} train tokens in {len(info.train_files)} file(s), "
          f"{info.val_tokens:,} val tokens in {len(info.val_files)} file(s); {info.tokenizer} tokenizer, "
          f"vocab_size {info.vocab_size}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="text files or folders to read")
    parser.add_argument("--out_dir", required=True, help="the dataset folder to write, e.g. data/mytext")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="gpt2")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of tokens for validation")
    parser.add_argument("--shard_tokens", type=int, default=None,
                        help="tokens per shard file (default: one train.bin and one val.bin)")
    parser.add_argument("--text_field", default="text", help="the .jsonl field / .parquet column of the text")
    parser.add_argument("--num_proc", type=int, default=DEFAULT_NUM_PROC, help="tokenizer worker processes")
    args = parser.parse_args()
    run_and_report(prepare, inputs=args.input, out_dir=args.out_dir, tokenizer=args.tokenizer,
                   val_fraction=args.val_fraction, shard_tokens=args.shard_tokens, text_field=args.text_field,
                   num_proc=args.num_proc)


if __name__ == "__main__":
    main()
