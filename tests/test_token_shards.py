import json

import numpy as np
import pytest

from token_shards import (REPO_ROOT, DataError, check_enough_tokens, download_once, prepare_command, read_dataset,
                          write_dataset)

CHAR_META = {"tokenizer": "char", "vocab_size": 5, "chars": "abcde"}


def write_small(out_dir, shard_tokens=None, train_tokens=100, val_tokens=20):
    train = [np.arange(train_tokens) % 5]
    val = [np.arange(val_tokens) % 5]
    return write_dataset(out_dir, train, val, CHAR_META, shard_tokens)


def test_round_trip_single_files(tmp_path):
    info = write_small(tmp_path / "tiny")
    assert [f.name for f in info.train_files] == ["train.bin"] and [f.name for f in info.val_files] == ["val.bin"]
    assert (info.tokenizer, info.vocab_size, info.train_tokens, info.val_tokens) == ("char", 5, 100, 20)
    assert info.meta["chars"] == "abcde" and info.meta["format_version"] == 1 and info.meta["dtype"] == "uint16"
    np.testing.assert_array_equal(np.memmap(info.train_files[0], dtype=np.uint16, mode="r"), np.arange(100) % 5)
    assert read_dataset(tmp_path / "tiny") == info


def test_shards_cut_at_fixed_size_across_arrays(tmp_path):
    train = [np.full(7, 1), np.full(10, 2), np.full(8, 3)]
    info = write_dataset(tmp_path / "sharded", train, [np.zeros(3)], CHAR_META, shard_tokens=10)
    assert [f.name for f in info.train_files] == ["train_000000.bin", "train_000001.bin", "train_000002.bin"]
    assert [f.stat().st_size // 2 for f in info.train_files] == [10, 10, 5]
    assert [f.name for f in info.val_files] == ["val_000000.bin"]
    tokens = np.concatenate([np.fromfile(f, dtype=np.uint16) for f in info.train_files])
    np.testing.assert_array_equal(tokens, np.concatenate(train))
    assert not list(tmp_path.glob("sharded/.tmp_*"))


def test_failed_write_keeps_existing_dataset(tmp_path):
    before = write_small(tmp_path / "tiny")

    def failing_tokens():
        yield np.ones(50)
        raise RuntimeError("tokenizer crashed")

    with pytest.raises(RuntimeError):
        write_dataset(tmp_path / "tiny", failing_tokens(), [np.ones(5)], CHAR_META)
    assert read_dataset(tmp_path / "tiny") == before
    assert not list(tmp_path.glob("tiny/.tmp_*"))


@pytest.mark.parametrize("meta, arrays, message", [
    ({"tokenizer": "x", "vocab_size": 70000}, [np.ones(3)], "vocab_size=70000"),
    (CHAR_META, [np.array([1, 5])], "outside the vocabulary"),
    (CHAR_META, [], "train split came out empty"),
])
def test_write_refuses_bad_input(tmp_path, meta, arrays, message):
    with pytest.raises(DataError, match=message):
        write_dataset(tmp_path / "bad", arrays, [np.ones(3)], meta)
    assert not (tmp_path / "bad" / "meta.json").exists()


def test_missing_folder_names_prepare_command(tmp_path):
    with pytest.raises(DataError) as error:
        read_dataset(tmp_path / "shakespeare_char")
    assert "does not exist" in str(error.value)
    assert f"python data/shakespeare_char/prepare.py --out_dir {tmp_path / 'shakespeare_char'}" in str(error.value)


def test_prepare_command_for_the_repo_data_folder():
    assert prepare_command(REPO_ROOT / "data" / "shakespeare_char") == "python data/shakespeare_char/prepare.py"


def test_missing_meta_without_script_suggests_text_prepare(tmp_path):
    (tmp_path / "mytext").mkdir()
    with pytest.raises(DataError, match="has no meta.json.*python data/text/prepare.py --input"):
        read_dataset(tmp_path / "mytext")


def test_bad_json_and_missing_keys(tmp_path):
    info = write_small(tmp_path / "tiny")
    meta_path = info.path / "meta.json"
    meta_path.write_text("{not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        read_dataset(info.path)
    meta_path.write_text(json.dumps({"tokenizer": "char"}))
    with pytest.raises(DataError, match="lacks the keys format_version, vocab_size"):
        read_dataset(info.path)


def test_truncated_shard(tmp_path):
    info = write_small(tmp_path / "tiny")
    with open(info.train_files[0], "r+b") as file:
        file.truncate(150)
    with pytest.raises(DataError, match="hold 150 bytes, but the 100 tokens meta.json lists need 200: a file is trunc"):
        read_dataset(info.path)


def test_missing_shard(tmp_path):
    info = write_small(tmp_path / "tiny")
    info.val_files[0].unlink()
    with pytest.raises(DataError, match="val token files val.bin listed in .* are missing"):
        read_dataset(info.path)


def test_check_enough_tokens(tmp_path):
    info = write_small(tmp_path / "tiny", train_tokens=100, val_tokens=20)
    check_enough_tokens(info, block_size=19)
    with pytest.raises(DataError, match=r"val split .* block_size\+1 = 21 tokens \(it has 20 tokens"):
        check_enough_tokens(info, block_size=20)


def test_download_once_fetches_once_and_leaves_nothing_half_written(tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("hello")
    target = tmp_path / "cache" / "input.txt"
    assert download_once(source.as_uri(), target, "unused") == target and target.read_text() == "hello"
    source.write_text("changed")
    download_once(source.as_uri(), target, "unused")
    assert target.read_text() == "hello"  # an existing file is never fetched again
    with pytest.raises(DataError, match="failed .*Use --input PATH instead."):
        download_once((tmp_path / "missing.txt").as_uri(), tmp_path / "other.txt", "Use --input PATH instead.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "source.txt"]
