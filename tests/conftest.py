import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

SHARED = REPO_ROOT.parent / "shared"
SHAKESPEARE_TXT = SHARED / "data" / "tinyshakespeare" / "input.txt"
TIKTOKEN_CACHE = SHARED / "tiktoken_cache"

if TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))


@pytest.fixture
def shakespeare_text_path():
    if not SHAKESPEARE_TXT.is_file():
        pytest.skip(f"offline Tiny Shakespeare not found at {SHAKESPEARE_TXT}")
    return SHAKESPEARE_TXT
