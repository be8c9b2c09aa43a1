import pytest

from token_shards import DataError
from tokenizer import CharTokenizer, GPT2Tokenizer, get_tokenizer, tokenizer_from_meta


def test_char_round_trip():
    tokenizer = CharTokenizer("hello world")
    assert tokenizer.chars == " dehlorw" and tokenizer.vocab_size == 8 and tokenizer.name == "char"
    ids = tokenizer.encode("hold")
    assert ids == [3, 5, 4, 1]
    assert tokenizer.decode(ids) == "hold"
    assert tokenizer_from_meta(tokenizer.meta).chars == tokenizer.chars


def test_char_unknown_character():
    with pytest.raises(DataError, match="The character 'z' is not in this character-level vocabulary"):
        CharTokenizer("abc").encode("abz")


def test_gpt2_round_trip():
    tokenizer = get_tokenizer("gpt2")
    assert isinstance(tokenizer, GPT2Tokenizer)
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.decode([15496, 995]) == "Hello world"
    assert (tokenizer.vocab_size, tokenizer.eot_token, tokenizer.name) == (50257, 50256, "gpt2")
    assert tokenizer_from_meta({"tokenizer": "gpt2", "vocab_size": 50257}).vocab_size == 50257


def test_unknown_tokenizer_lists_accepted():
    with pytest.raises(DataError, match="Unknown tokenizer 'bpe'. Accepted tokenizers: char, gpt2"):
        get_tokenizer("bpe")


def test_gpt2_tokenizer_without_its_files_or_network_says_what_to_do(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError(f"Failed to resolve 'openaipublic.blob.core.windows.net' while loading {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(DataError) as error:
        GPT2Tokenizer()
    message = str(error.value)
    assert "Failed to resolve" in message and "TIKTOKEN_CACHE_DIR" in message and "Connect to the internet" in message
