"""Tokenizers that turn text into the token ids stored in a prepared dataset, and back.

Two kinds, named as in a dataset's meta.json:
  "char": one token per character of a fixed vocabulary (nanoGPT's shakespeare_char)
  "gpt2": GPT-2 byte-pair encoding from tiktoken (50257 tokens, <|endoftext|> = 50256)
"""
from token_shards import DataError

TOKENIZERS = ("char", "gpt2")


class CharTokenizer:
    name = "char"
    eot_token = None  # a character vocabulary has no document separator

    def __init__(self, chars):
        self.chars = "".join(sorted(set(chars)))
        if not self.chars:
            raise DataError("A character tokenizer needs at least one character in its vocabulary; got an empty one.")
        self.vocab_size = len(self.chars)
        self.char_to_id = {ch: i for i, ch in enumerate(self.chars)}

    def encode(self, text):
        try:
            return [self.char_to_id[ch] for ch in text]
        except KeyError as error:
            raise DataError(f"The character {error.args[0]!r} is not in this character-level vocabulary "
                            f"({self.vocab_size} characters: {self.chars!r}). Use only those characters, "
                            "or prepare the dataset again from text that contains it.") from None

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    @property
    def meta(self):
        return {"tokenizer": self.name, "vocab_size": self.vocab_size, "chars": self.chars}


class GPT2Tokenizer:
    name = "gpt2"

    def __init__(self):
        # imported here so that character-level work never needs tiktoken installed
        try:
            import tiktoken
        except ImportError:
            raise DataError("The gpt2 tokenizer needs the tiktoken package, which is not installed. "
                            "Install it with: pip install tiktoken") from None
        try:
            self.encoding = tiktoken.get_encoding("gpt2")
        except OSError as error:  # requests' and urllib's network errors are OSErrors too
            raise DataError(f"The gpt2 tokenizer could not load its byte-pair files: tiktoken downloads them on "
                            f"first use (from openaipublic.blob.core.windows.net) into its cache folder "
                            f"(TIKTOKEN_CACHE_DIR, else the system's temporary folder), and that failed: {error}. "
                            f"Connect to the internet once, or set TIKTOKEN_CACHE_DIR to a folder holding "
                            f"tiktoken's cached files.") from None
        self.vocab_size = self.encoding.n_vocab
        self.eot_token = self.encoding.eot_token

    def encode(self, text):
        # ordinary text only: the string "<|endoftext|>" inside data or a prompt stays plain text
        return self.encoding.encode_ordinary(text)

    def decode(self, ids):
        return self.encoding.decode(list(ids))

    @property
    def meta(self):
        return {"tokenizer": self.name, "vocab_size": self.vocab_size}


def get_tokenizer(name, chars=None):
    """The tokenizer called name; "char" also needs its vocabulary (chars)."""
    if name == "char":
        if chars is None:
            raise DataError("The char tokenizer needs its vocabulary: pass chars=<the characters>, "
                            "or build it from a dataset's meta.json with tokenizer_from_meta.")
        return CharTokenizer(chars)
    if name == "gpt2":
        return GPT2Tokenizer()
    raise DataError(f"Unknown tokenizer {name!r}. Accepted tokenizers: {', '.join(TOKENIZERS)}.")


def tokenizer_from_meta(meta):
    """The tokenizer described by a dataset's meta.json (or the copy a checkpoint keeps)."""
    if "tokenizer" not in meta:
        raise DataError(f"The dataset metadata names no tokenizer (keys: {sorted(meta)}). "
                        f"It needs a 'tokenizer' entry, one of: {', '.join(TOKENIZERS)}.")
    if meta["tokenizer"] == "char" and "chars" not in meta:
        raise DataError("The dataset metadata says tokenizer 'char' but has no 'chars' vocabulary. "
                        "Prepare the dataset again to rebuild its meta.json.")
    return get_tokenizer(meta["tokenizer"], meta.get("chars"))
