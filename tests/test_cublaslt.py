"""cublaslt.py: its custom ops (checked with torch.library.opcheck, and against torch, on the CPU,
where they run torch's own kernels: the cuBLASLt calls need a GPU) and how it finds libcublasLt."""
import pytest
import torch
import torch.nn.functional as F

import cublaslt


@pytest.mark.parametrize("bias", [True, False])
def test_linear_op_is_f_linear(bias):
    x, weight = torch.randn(6, 8), torch.randn(5, 8)
    b = torch.randn(5) if bias else None
    torch.library.opcheck(torch.ops.workbench.linear, (x, weight, b))
    torch.testing.assert_close(torch.ops.workbench.linear(x, weight, b), F.linear(x, weight, b))


def test_scaled_mm_op_is_torch_scaled_mm():
    a = torch.randn(16, 32).to(torch.float8_e4m3fn)
    b = torch.randn(48, 32).to(torch.float8_e4m3fn).T  # column-major, as torch._scaled_mm wants it
    scale_a, scale_b = torch.tensor(0.5), torch.tensor(2.0)
    # test_schema is left out: it multiplies the float8 inputs, which the CPU does not implement
    torch.library.opcheck(torch.ops.workbench.scaled_mm, (a, b, scale_a, scale_b, torch.bfloat16, False),
                          test_utils=("test_faketensor", "test_autograd_registration"))
    out = torch.ops.workbench.scaled_mm(a, b, scale_a, scale_b, torch.float32, False)
    torch.testing.assert_close(out, a.float() @ b.float(), rtol=1e-5, atol=1e-4)


def test_rows_contiguous_keeps_row_strided_views_and_copies_the_rest():
    padded = torch.randn(4, 10)
    assert cublaslt._rows_contiguous(padded[:, :8]).data_ptr() == padded.data_ptr()  # leading dimension 10
    columns = padded.T
    copied = cublaslt._rows_contiguous(columns)
    assert copied.is_contiguous() and torch.equal(copied, columns)


def test_mapped_libraries_finds_what_this_process_loaded():
    """How the module finds PyTorch's own libcublasLt (here: the C library, loaded by every process)."""
    import sys
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/maps")
    paths = cublaslt.mapped_libraries("libc.so")
    assert paths and all(path.startswith("/") and "libc.so" in path for path in paths)
    assert cublaslt.mapped_libraries("libno_such_library.so") == []
