"""cublaslt.py: its custom ops (checked with torch.library.opcheck, and against torch, on the CPU,
where they run torch's own kernels: the cuBLASLt calls need a GPU), which operands it reads in
place, and how it finds libcublasLt."""
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


def test_operands_are_read_in_place_only_with_aligned_contiguous_rows():
    padded = torch.randn(4, 12)
    assert cublaslt._operand(padded[:, :8]).data_ptr() == padded.data_ptr()  # leading dimension 12 (48 bytes)
    for unusable in (padded.T, torch.randn(4, 10)[:, :8], padded[:, 1:9]):  # columns; 40-byte rows; unaligned start
        copied = cublaslt._operand(unusable)
        assert copied.is_contiguous() and copied.data_ptr() != unusable.data_ptr() and torch.equal(copied, unusable)


def test_matmul_hands_cublaslt_operands_it_can_read_in_place(monkeypatch):
    calls = []

    class Recorder:
        def matmul(self, out, a, b, *args):
            calls.append((a, b))

    monkeypatch.setattr(cublaslt, "_cublaslt", Recorder)
    rows, columns = torch.randn(4, 8), torch.randn(8, 4).T  # the second's rows are not contiguous
    cublaslt.matmul(torch.empty(4, 4), (rows, cublaslt.OP_T), (columns, cublaslt.OP_N), 4, 4, 8)
    (a, op_a), (b, op_b) = calls[0]
    assert a is rows and op_a == cublaslt.OP_T and op_b == cublaslt.OP_N
    assert b.is_contiguous() and torch.equal(b, columns)


def test_linear_takes_torch_where_cublaslt_cannot(monkeypatch):
    """Rows that are not 16-byte multiples, or fp32, run F.linear even with cuBLASLt loaded (here
    pretended: a call to it fails the test)."""
    monkeypatch.setattr(cublaslt, "loadable", lambda: True)
    monkeypatch.setattr(cublaslt, "matmul", lambda *args, **kwargs: pytest.fail("cuBLASLt called"))
    cases = [(torch.randn(6, 12).bfloat16(), torch.randn(16, 12).bfloat16(), None),  # K = 12
             (torch.randn(6, 16).bfloat16(), torch.randn(12, 16).bfloat16(), None),  # N = 12
             (torch.randn(6, 16), torch.randn(16, 16), None)]  # fp32
    for x, weight, bias in cases:
        torch.testing.assert_close(cublaslt._linear_cuda(x, weight, bias), F.linear(x, weight, bias))
    with pytest.raises(pytest.fail.Exception):  # and sizes it takes do reach it
        cublaslt._linear_cuda(torch.randn(6, 16).bfloat16(), torch.randn(16, 16).bfloat16(), None)


def test_weight_gradient_op_sums_in_fp32_and_writes_the_requested_dtype():
    grad_out, x = torch.randn(64, 16).bfloat16(), torch.randn(64, 24).bfloat16()
    torch.library.opcheck(torch.ops.workbench.weight_gradient, (grad_out, x, torch.float32))
    out = torch.ops.workbench.weight_gradient(grad_out, x, torch.float32)
    exact = grad_out.double().T @ x.double()
    assert out.dtype == torch.float32 and out.shape == (16, 24)
    torch.testing.assert_close(out.double(), exact, rtol=1e-6, atol=1e-6)  # not rounded to bf16 on the way
    assert not torch.allclose(exact.bfloat16().double(), exact, rtol=1e-6, atol=1e-6)  # which would show here
    torch.testing.assert_close(torch.ops.workbench.weight_gradient(grad_out.double(), x.double(), torch.float64),
                               exact)


def test_weight_gradient_takes_torch_where_cublaslt_cannot(monkeypatch):
    """Widths that are not multiples of 8, fp32 operands, or an output dtype cuBLASLt is not asked
    for run torch's matmul (a call to the pretended cuBLASLt fails the test)."""
    monkeypatch.setattr(cublaslt, "loadable", lambda: True)
    monkeypatch.setattr(cublaslt, "matmul", lambda *args, **kwargs: pytest.fail("cuBLASLt called"))
    bf16 = torch.bfloat16
    cases = [(torch.randn(32, 12).to(bf16), torch.randn(32, 16).to(bf16), torch.float32),  # N = 12
             (torch.randn(32, 16).to(bf16), torch.randn(32, 12).to(bf16), torch.float32),  # K = 12
             (torch.randn(32, 16), torch.randn(32, 16), torch.float32),  # fp32 operands
             (torch.randn(32, 16).to(bf16), torch.randn(32, 16).to(bf16), torch.float64)]
    for grad_out, x, dtype in cases:
        out = cublaslt._weight_gradient_cuda(grad_out, x, dtype)
        assert out.dtype == dtype
        torch.testing.assert_close(out, (grad_out.T @ x).to(dtype))
    with pytest.raises(pytest.fail.Exception):  # and sizes it takes do reach it
        cublaslt._weight_gradient_cuda(torch.randn(32, 16).to(bf16), torch.randn(32, 16).to(bf16), torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuBLASLt needs a GPU")
def test_weight_gradient_on_the_gpu_equals_the_fp32_product():
    torch.manual_seed(0)
    for rows, n, k in ((1024, 48, 40), (4096, 256, 776)):  # 776: fused_mlp's padded operand
        grad_out = torch.randn(rows, n, device="cuda").bfloat16()
        x = torch.randn(rows, k, device="cuda").bfloat16()
        exact = (grad_out.double().T @ x.double()).float()
        out = torch.ops.workbench.weight_gradient(grad_out, x, torch.float32)
        assert out.dtype == torch.float32 and out.shape == (n, k)
        # fp32 sums of rows terms of about 1: errors grow as sqrt(rows); bf16 output would be off by 0.1-0.5
        torch.testing.assert_close(out, exact, rtol=1e-5, atol=1e-4 * rows ** 0.5)
        torch.testing.assert_close(torch.ops.workbench.weight_gradient(grad_out, x, torch.bfloat16),
                                   exact.bfloat16(), rtol=1.6e-2, atol=1e-4 * rows ** 0.5)


def test_mapped_libraries_finds_what_this_process_loaded():
    """How the module finds PyTorch's own libcublasLt (here: the C library, loaded by every process)."""
    import sys
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/maps")
    paths = cublaslt.mapped_libraries("libc.so")
    assert paths and all(path.startswith("/") and "libc.so" in path for path in paths)
    assert cublaslt.mapped_libraries("libno_such_library.so") == []


def test_each_plan_tells_cublaslt_how_its_operands_are_aligned(monkeypatch):
    """cuBLASLt's heuristic assumes 256-byte aligned addresses unless told, and may pick an algorithm
    that needs them. A view starting 16 bytes into its storage gets a plan of its own, asked for with
    16 (checked with a stand-in for the library that records the heuristic's preferences)."""
    from types import SimpleNamespace
    preferences = []

    def record_preference(preference, attribute, value, size):
        preferences.append((attribute, value._obj.value))
        return 0

    def one_algorithm(*args):
        args[-1]._obj.value = 1
        return 0

    library = SimpleNamespace(**{name: (lambda *args: 0) for name in (
        "cublasLtMatmulDescCreate", "cublasLtMatmulDescSetAttribute", "cublasLtMatrixLayoutCreate",
        "cublasLtMatmulPreferenceCreate", "cublasLtMatmul")})
    library.cublasLtMatmulPreferenceSetAttribute = record_preference
    library.cublasLtMatmulAlgoGetHeuristic = one_algorithm
    lt = cublaslt._CublasLt(library)
    monkeypatch.setattr(torch.cuda, "current_blas_handle", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(lt, "_workspace", lambda device: torch.empty(1))
    monkeypatch.setattr(lt, "_time_each", lambda runs: [0.0] * len(runs))

    storage = torch.zeros(8 * 8 + 8, dtype=torch.bfloat16)  # CPU tensors start 64-byte aligned at least
    aligned, shifted = storage[:64].view(8, 8), storage[8:72].view(8, 8)  # the second starts 16 bytes in
    weight, out = torch.zeros(8, 8, dtype=torch.bfloat16), torch.zeros(8, 8, dtype=torch.bfloat16)
    assert cublaslt._alignment(aligned) >= 64 and cublaslt._alignment(shifted) == 16
    for x in (aligned, shifted, aligned):
        lt.matmul(out, (weight, cublaslt.OP_T), (x, cublaslt.OP_N), 8, 8, 8, cublaslt.EPILOGUE_DEFAULT)
    assert len(lt.plans) == 2  # the third call reuses the first plan
    b_alignment = [value for attribute, value in preferences if attribute == cublaslt.PREF_MIN_ALIGNMENT_BYTES[1]]
    assert b_alignment == [min(256, cublaslt._alignment(aligned)), 16]


def test_workspace_is_reserved_for_the_step_device_before_any_graph_runs(monkeypatch):
    """build_step_parts reserves it: a workspace first allocated inside a step recorded as CUDA graphs
    stays in the graphs' pool, which torch refuses (seen on an H100 with the llama preset)."""
    from types import SimpleNamespace
    reserved = []
    monkeypatch.setattr(cublaslt, "_LIBRARY", [SimpleNamespace(_workspace=reserved.append)])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    cublaslt.reserve_workspace("cpu")
    assert reserved == []
    cublaslt.reserve_workspace("cuda:1")
    cublaslt.reserve_workspace("cuda")
    assert reserved == [torch.device("cuda", 1), torch.device("cuda", 3)]
    monkeypatch.setattr(cublaslt, "_LIBRARY", [None])  # no libcublasLt: nothing to reserve
    cublaslt.reserve_workspace("cuda:0")
    assert len(reserved) == 2
