"""The on-disk format of a prepared dataset: one folder per dataset, e.g. data/shakespeare_char/.

  train.bin, val.bin                       small datasets: one token file per split
  train_000000.bin, train_000001.bin, ...  big datasets: shards of a fixed number of tokens
  meta.json                                what the files hold (see write_dataset), written last

A token file is a flat array of little-endian uint16 token ids, no header, so nanoGPT-style code can
read it with np.memmap(path, dtype=np.uint16, mode="r"). Every file is written under a temporary name
and renamed into place, and meta.json only after all token files, so a folder with a meta.json is a
complete dataset. A failed or interrupted tokenisation never touches the dataset already there; an
interruption during the final renames (a moment) leaves the folder without meta.json, which reads
as incomplete and is prepared again, never as a mix of old and new files.
"""
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training_logger import write_json_atomically

FORMAT_VERSION = 1
TOKEN_DTYPE = np.dtype("<u2")
MAX_VOCAB_SIZE = 2 ** 16  # token ids must fit in uint16
SPLITS = ("train", "val")
REQUIRED_META_KEYS = ("format_version", "tokenizer", "vocab_size", "train_shards", "val_shards",
                      "train_tokens", "val_tokens", "dtype")
REPO_ROOT = Path(__file__).resolve().parent


class DataError(ValueError):
    """A dataset, its files or a data option is unusable; the message says why and what to do."""


@dataclass
class DatasetInfo:
    path: Path
    tokenizer: str
    vocab_size: int
    train_files: list
    val_files: list
    train_tokens: int
    val_tokens: int
    meta: dict

    def files(self, split):
        return getattr(self, f"{checked_split(split)}_files")

    def tokens(self, split):
        return getattr(self, f"{checked_split(split)}_tokens")


def checked_split(split):
    if split not in SPLITS:
        raise DataError(f"Unknown dataset split {split!r}. Accepted splits: {', '.join(SPLITS)}.")
    return split


# ----------------------------------------------------------------------------- writing

def write_dataset(out_dir, train_token_arrays, val_token_arrays, tokenizer_meta, shard_tokens=None):
    """Writes both splits' tokens and then meta.json into out_dir; returns the new DatasetInfo.

    Each split is an iterable of integer arrays whose tokens are concatenated. With shard_tokens=None a
    split becomes one file (train.bin, val.bin), otherwise shards of shard_tokens tokens (the last one
    shorter). tokenizer_meta holds "tokenizer", "vocab_size" and, for "char", "chars". The val split is
    written before train, so a caller may draw both from one stream, val first (as fineweb_edu does).
    """
    out_dir = Path(out_dir)
    vocab_size = check_vocab_size(tokenizer_meta.get("vocab_size"))
    if shard_tokens is not None and (not isinstance(shard_tokens, int) or shard_tokens < 1):
        raise DataError(f"shard_tokens={shard_tokens!r} is not accepted: use a positive number of tokens "
                        "per shard, or None for one file per split.")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {split: [] for split in SPLITS}  # (temporary path, final path) of each token file
    try:
        val_tokens = _write_split(out_dir, "val", val_token_arrays, vocab_size, shard_tokens, written["val"])
        train_tokens = _write_split(out_dir, "train", train_token_arrays, vocab_size, shard_tokens, written["train"])
    except BaseException:
        for temporary, _ in written["val"] + written["train"]:
            temporary.unlink(missing_ok=True)
        raise
    # drop the old meta.json first: while the files are swapped, the folder reads as incomplete
    (out_dir / "meta.json").unlink(missing_ok=True)
    for temporary, final in written["val"] + written["train"]:
        os.replace(temporary, final)
    meta = {"format_version": FORMAT_VERSION, **tokenizer_meta,
            "train_shards": [final.name for _, final in written["train"]],
            "val_shards": [final.name for _, final in written["val"]],
            "train_tokens": train_tokens, "val_tokens": val_tokens, "dtype": "uint16"}
    write_json_atomically(out_dir / "meta.json", meta)
    return read_dataset(out_dir)


def check_vocab_size(vocab_size):
    if not isinstance(vocab_size, int) or not 0 < vocab_size <= MAX_VOCAB_SIZE:
        raise DataError(f"vocab_size={vocab_size!r} cannot be stored: token files hold uint16 ids, so the "
                        f"vocabulary must have between 1 and {MAX_VOCAB_SIZE} tokens.")
    return vocab_size


def _write_split(out_dir, split, token_arrays, vocab_size, shard_tokens, written):
    """Streams one split into temporary token files (appended to written); returns its token count."""
    total = 0
    file = None
    try:
        for tokens in token_arrays:
            tokens = _checked_tokens(tokens, vocab_size, split)
            while tokens.size:
                if file is None:
                    name = f"{split}.bin" if shard_tokens is None else f"{split}_{len(written):06d}.bin"
                    written.append((out_dir / f".tmp_{name}", out_dir / name))
                    file = open(written[-1][0], "wb")
                    room = shard_tokens if shard_tokens is not None else sys.maxsize
                piece, tokens = tokens[:room], tokens[room:]
                file.write(piece.tobytes())
                total += piece.size
                room -= piece.size
                if room == 0:
                    file.close()
                    file = None
    finally:
        if file is not None:
            file.close()
    if total == 0:
        raise DataError(f"The {split} split came out empty: the input is too small for the chosen split. "
                        "Give more text, or a larger validation fraction / more tokens.")
    return total


def _checked_tokens(tokens, vocab_size, split):
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise DataError(f"A {split} token id ({tokens.min()}..{tokens.max()}) is outside the vocabulary "
                        f"0..{vocab_size - 1}; the tokenizer and its vocab_size do not match.")
    return tokens.astype(TOKEN_DTYPE, copy=False).ravel()


def download_once(url, path, alternative):
    """Downloads url to path unless path exists; a half-downloaded file never takes its place.
    alternative: what the user can do instead, for the error when the download fails."""
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".tmp_{path.name}.{os.getpid()}")
    print(f"downloading {url} to {path}")
    try:
        urllib.request.urlretrieve(url, partial)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise DataError(f"Downloading {url} failed ({error}). {alternative}") from None
    os.replace(partial, path)
    return path


# ----------------------------------------------------------------------------- reading

def read_dataset(data_dir):
    """The DatasetInfo of a prepared dataset folder, after checking that its files are complete."""
    data_dir = Path(data_dir)
    meta = _read_meta(data_dir)
    files = {split: [data_dir / name for name in meta[f"{split}_shards"]] for split in SPLITS}
    for split in SPLITS:
        _check_split_files(data_dir, split, files[split], meta[f"{split}_tokens"])
    return DatasetInfo(path=data_dir, tokenizer=meta["tokenizer"], vocab_size=meta["vocab_size"],
                       train_files=files["train"], val_files=files["val"],
                       train_tokens=meta["train_tokens"], val_tokens=meta["val_tokens"], meta=meta)


def _read_meta(data_dir):
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        state = "does not exist" if not data_dir.exists() else "has no meta.json (never prepared, or interrupted)"
        raise DataError(f"The dataset folder {data_dir} {state}. Prepare it first with: "
                        f"{prepare_command(data_dir)}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{meta_path} is not valid JSON ({error}). The dataset is damaged; prepare it again "
                        f"with: {prepare_command(data_dir)}") from None
    missing = [key for key in REQUIRED_META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise DataError(f"{meta_path} lacks the keys {', '.join(missing)} (it needs "
                        f"{', '.join(REQUIRED_META_KEYS)}). Prepare the dataset again with: "
                        f"{prepare_command(data_dir)}")
    if meta["format_version"] != FORMAT_VERSION or meta["dtype"] != "uint16":
        raise DataError(f"{meta_path} has format_version={meta['format_version']!r}, dtype={meta['dtype']!r}; "
                        f"this code reads format_version={FORMAT_VERSION}, dtype='uint16'. "
                        f"Prepare the dataset again with: {prepare_command(data_dir)}")
    return meta


def _check_split_files(data_dir, split, files, expected_tokens):
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise DataError(f"The {split} token files {', '.join(missing)} listed in {data_dir / 'meta.json'} are "
                        f"missing. Prepare the dataset again with: {prepare_command(data_dir)}")
    found_bytes = sum(path.stat().st_size for path in files)
    if found_bytes != expected_tokens * TOKEN_DTYPE.itemsize:
        raise DataError(f"The {split} token files of {data_dir} hold {found_bytes} bytes, but the {expected_tokens} "
                        f"tokens meta.json lists need {expected_tokens * TOKEN_DTYPE.itemsize}: a file is truncated "
                        f"or corrupt. Prepare the dataset again with: {prepare_command(data_dir)}")


def prepare_command(data_dir):
    """The command that (re)creates the dataset in data_dir, for error messages."""
    data_dir = Path(data_dir)
    script = REPO_ROOT / "data" / data_dir.name / "prepare.py"
    if not script.is_file():
        return f"python data/text/prepare.py --input YOUR_FILES --out_dir {data_dir}"
    command = f"python data/{data_dir.name}/prepare.py"
    if data_dir.resolve() != script.parent:
        command += f" --out_dir {data_dir}"
    return command


def check_enough_tokens(info, block_size):
    """Refuses a dataset whose splits cannot fill one training window (block_size inputs + 1 target)."""
    for split in SPLITS:
        longest_file = max((path.stat().st_size // TOKEN_DTYPE.itemsize for path in info.files(split)), default=0)
        if longest_file < block_size + 1:
            raise DataError(f"The {split} split of {info.path} has no token file with at least block_size+1 = "
                            f"{block_size + 1} tokens (it has {info.tokens(split)} tokens in "
                            f"{len(info.files(split))} file(s)). Use a smaller block_size or prepare more data.")
