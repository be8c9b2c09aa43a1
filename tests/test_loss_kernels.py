"""The Triton kernel of the fused loss, run on the CPU by Triton's interpreter (in a subprocess:
TRITON_INTERPRET must be set before the kernel is defined)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent

CHECKS = textwrap.dedent("""
    import torch
    import loss_kernels

    loss_kernels.TILE = 16  # several tiles each way, the last ones partly past the matrix
    matrix = torch.randint(0, 255, (70, 130), dtype=torch.uint8).view(torch.float8_e5m2)
    transposed = loss_kernels.transpose(matrix)
    assert transposed.dtype == torch.float8_e5m2 and transposed.shape == (130, 70)
    assert torch.equal(transposed.view(torch.uint8), matrix.T.contiguous().view(torch.uint8))
    print("ok")
""")


def test_transpose_kernel_copies_every_element_to_its_transposed_place():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", CHECKS], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
