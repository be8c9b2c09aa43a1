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


@pytest.fixture(scope="session")
def char_data(tmp_path_factory):
    """A data folder holding Tiny Shakespeare prepared by data/shakespeare_char/prepare.py."""
    if not SHAKESPEARE_TXT.is_file():
        pytest.skip(f"offline Tiny Shakespeare not found at {SHAKESPEARE_TXT}")
    from data.shakespeare_char.prepare import prepare
    root = tmp_path_factory.mktemp("data")
    prepare(SHAKESPEARE_TXT, root / "shakespeare_char")
    return root


def tiny_ablation_args(tmp_path, char_data, max_iters):
    """train.py options for a seconds-long ablation run on the CPU, writing under tmp_path."""
    return ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", f"--max_iters={max_iters}",
            f"--eval_interval={max_iters}", "--eval_iters=2", "--device=cpu", "--compile=False", "--logger_backends=[]",
            f"--data_dir={char_data}", "--dataset=shakespeare_char", f"--out_dir={tmp_path / 'runs'}",
            f"--checkpoint_dir={tmp_path / 'checkpoints'}"]


@pytest.fixture
def triton_interpreter():
    """run(checks): runs the Python source `checks` in a subprocess with Triton's interpreter
    (TRITON_INTERPRET must be set before kernels are defined) and expects it to print "ok"."""
    import subprocess
    import textwrap

    def run(checks):
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(checks)], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    return run


@pytest.fixture
def build_for_sm90():
    """build(kernel, signature, constants, **options): the kernel compiled for an H100 (sm_90) as
    torch.compile would build it; skips where no ptxas for sm_90 is installed."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def build(kernel, signature, constants, **options):
        try:
            return triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                                  options=options)
        except RuntimeError as error:
            if "ptxas" in str(error).lower():
                pytest.skip(f"no ptxas for sm_90 here: {error}")
            raise
    return build
