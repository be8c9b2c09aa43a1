import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.fineweb_edu.prepare import prepare as prepare_fineweb_edu
from data.shakespeare.prepare import prepare as prepare_shakespeare
from data.shakespeare_char.prepare import prepare as prepare_shakespeare_char
from data.text.prepare import prepare as prepare_text
from token_shards import DataError, read_dataset
from tokenizer import tokenizer_from_meta

EOT = 50256
REPO_ROOT = Path(__file__).resolve().parent.parent


def all_tokens(info, split):
    return np.concatenate([np.fromfile(path, dtype=np.uint16) for path in info.files(split)])


def test_shakespeare_char(shakespeare_text_path, tmp_path):
    info = prepare_shakespeare_char(shakespeare_text_path, tmp_path / "shakespeare_char")
    text = shakespeare_text_path.read_text()
    assert (info.tokenizer, info.vocab_size) == ("char", 65)
    assert (info.train_tokens, info.val_tokens) == (1_003_854, 111_540)  # nanoGPT's split exactly
    assert info.train_tokens + info.val_tokens == len(text)
    tokenizer = tokenizer_from_meta(info.meta)
    assert tokenizer.decode(all_tokens(info, "val").tolist()) == text[1_003_854:]


def test_shakespeare_gpt2(shakespeare_text_path, tmp_path):
    info = prepare_shakespeare(shakespeare_text_path, tmp_path / "shakespeare")
    assert (info.tokenizer, info.vocab_size) == ("gpt2", 50257)
    # 338,025 tokens of text (encode_ordinary) plus the <|endoftext|> that starts every document
    assert info.train_tokens + info.val_tokens == 338_026
    assert (info.train_tokens, info.val_tokens) == (304_223, 33_803)
    assert all_tokens(info, "train")[0] == EOT


def test_text_txt_files_split_by_document(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(10):
        (tmp_path / "in" / f"doc{i}.txt").write_text(f"document number {i}. " * 20)
    info = prepare_text([tmp_path / "in"], tmp_path / "out", tokenizer="char", val_fraction=0.2, num_proc=1)
    assert info.meta["chars"] == "".join(sorted(set("document number 0123456789. ")))
    val_text = tokenizer_from_meta(info.meta).decode(all_tokens(info, "val").tolist())
    assert val_text == "document number 8. " * 20 + "document number 9. " * 20


def test_text_jsonl_with_text_field_and_shards(tmp_path):
    records = [{"body": f"Hello world {i}", "id": i} for i in range(50)]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(record) for record in records) + "\n")
    info = prepare_text([tmp_path / "docs.jsonl"], tmp_path / "out", text_field="body", shard_tokens=40, num_proc=2)
    tokens = np.concatenate([all_tokens(info, "train"), all_tokens(info, "val")])
    assert info.tokenizer == "gpt2" and len(info.train_files) > 1
    assert (tokens == EOT).sum() == 50 and info.train_tokens + info.val_tokens == len(tokens)
    assert tokens[:3].tolist() == [EOT, 15496, 995]  # <|endoftext|> Hello world
    with pytest.raises(DataError, match=r"docs.jsonl:1 has no text in the field 'text' \(fields: body, id\)"):
        prepare_text([tmp_path / "docs.jsonl"], tmp_path / "bad", num_proc=1)


def test_text_parquet(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet
    parquet.write_table(pyarrow.table({"text": ["Hello world", "more text here", "and the end"]}),
                        tmp_path / "docs.parquet")
    info = prepare_text([tmp_path / "docs.parquet"], tmp_path / "out", num_proc=1)
    assert all_tokens(info, "train")[:3].tolist() == [EOT, 15496, 995]
    assert info.val_tokens > 0


def test_text_rejects_unknown_input(tmp_path):
    (tmp_path / "notes.md").write_text("# notes")
    with pytest.raises(DataError, match=r"suffix '.md', which is not read. Accepted: .txt, .jsonl, .parquet"):
        prepare_text([tmp_path / "notes.md"], tmp_path / "out")


def test_fineweb_edu_on_local_jsonl(tmp_path):
    words = "the quick brown fox jumps over the lazy dog and keeps on running far away".split()
    documents = [" ".join(words[i % 7:] + words[:i % 7]) * 3 for i in range(300)]
    (tmp_path / "pages.jsonl").write_text("\n".join(json.dumps({"text": text}) for text in documents))
    info = prepare_fineweb_edu(tmp_path / "fineweb_edu", inputs=[tmp_path / "pages.jsonl"], shard_tokens=1000,
                               max_tokens=4500, num_proc=2)
    assert [path.name for path in info.val_files] == ["val_000000.bin"]
    assert [path.name for path in info.train_files] == [f"train_00000{i}.bin" for i in range(4)]
    assert (info.val_tokens, info.train_tokens) == (1000, 3500)
    assert all_tokens(info, "val")[0] == EOT
    assert read_dataset(tmp_path / "fineweb_edu").meta["vocab_size"] == 50257


def run_script(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_prepare_command_line(shakespeare_text_path, tmp_path):
    result = run_script("data/shakespeare_char/prepare.py", "--input", str(shakespeare_text_path),
                        "--out_dir", str(tmp_path / "chars"))
    assert result.returncode == 0, result.stderr
    assert "1,003,854 train tokens" in result.stdout
    assert read_dataset(tmp_path / "chars").vocab_size == 65


def test_prepare_command_line_error(tmp_path):
    result = run_script("data/text/prepare.py", "--input", str(tmp_path / "missing.txt"), "--out_dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: The input {tmp_path / 'missing.txt'} does not exist. "
                                     "Give existing files or folders.")
