"""cuBLASLt matmuls through ctypes, for what PyTorch does not expose: matmul epilogues (fused_mlp's
GELU and its gradient), and a choice among the heuristic's algorithms, each candidate timed on the
first call of a shape and the fastest kept (cuBLAS itself runs the heuristic's first).

Measured on an H100 at GPT-2 124M sizes (32768 tokens), against the heuristic's first algorithm: the
q/k/v projection 0.161 against 0.180 ms, the float8 LM head's logits 1.993 against 2.217 ms and its
weight gradient 1.881 against 1.980 ms; most other block matmuls gain under 2%.

linear(x, weight, bias), weight_gradient(grad_out, x, out_dtype) (grad_out.T @ x written in fp32 from
bf16 operands) and scaled_mm(a, b, scale_a, scale_b, out_dtype, fast_accum) are custom ops (opaque
to torch.compile) with the tuned cuBLASLt call on CUDA and plain torch elsewhere. PyTorch's CUDA
build has libcublasLt loaded; calls run on PyTorch's cuBLAS handle and current stream.
"""
import ctypes
import functools
import os
import warnings

import torch
import torch.nn.functional as F

# values from cublasLt.h / library_types.h (stable across CUDA 11-13)
CUDA_R_16F, CUDA_R_16BF, CUDA_R_32F, CUDA_R_8F_E4M3, CUDA_R_8F_E5M2 = 2, 14, 0, 28, 29
CUBLAS_COMPUTE_32F = 68
OP_N, OP_T = 0, 1
DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 3, 4, 7, 8
DESC_AUX_POINTER, DESC_AUX_LD = 11, 12
DESC_A_SCALE_POINTER, DESC_B_SCALE_POINTER, DESC_FAST_ACCUM = 17, 18, 25
PREF_MAX_WORKSPACE_BYTES = 1
PREF_MIN_ALIGNMENT_BYTES = (5, 6, 7, 8)  # of A, B, C and D; cuBLASLt assumes 256 unless told
MAX_ALIGNMENT = 256
EPILOGUE_DEFAULT, EPILOGUE_BIAS = 1, 4
EPILOGUE_GELU_AUX, EPILOGUE_GELU_AUX_BIAS = 160, 164
EPILOGUE_DGELU = 192
WORKSPACE_BYTES = 32 * 2 ** 20  # NVIDIA's advice for Hopper
CANDIDATE_ALGORITHMS = 8  # the heuristic's best few, timed on first use
LIBRARY_NAMES = ("libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so")
DATA_TYPES = {torch.bfloat16: CUDA_R_16BF, torch.float16: CUDA_R_16F, torch.float32: CUDA_R_32F,
              torch.float8_e4m3fn: CUDA_R_8F_E4M3, torch.float8_e5m2: CUDA_R_8F_E5M2}


@torch.library.custom_op("workbench::linear", mutates_args=())
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x (M, K), weight (N, K)."""
    return F.linear(x, weight, bias)


@linear.register_kernel("cuda")
def _linear_cuda(x, weight, bias):
    if not _takes([t for t in (x, weight, bias) if t is not None], widths=(x.shape[1], weight.shape[0])):
        return F.linear(x, weight, bias)
    out = x.new_empty(x.shape[0], weight.shape[0])
    # column-major: out^T (N x M) = weight (N x K, stored K x N, transposed) @ x^T (K x M)
    matmul(out, (weight, OP_T), (x, OP_N), rows_out=weight.shape[0],
           cols_out=x.shape[0], inner=x.shape[1], epilogue=EPILOGUE_DEFAULT if bias is None else EPILOGUE_BIAS,
           bias=bias)
    return out


@linear.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("workbench::weight_gradient", mutates_args=())
def weight_gradient(grad_out: torch.Tensor, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """grad_out.T @ x for grad_out (M, N), x (M, K): a linear layer's weight gradient, summed in at
    least fp32 and written in out_dtype, the parameter's. cuBLASLt writes an fp32 result straight from
    bf16 operands, where torch's matmul would write bf16 for a separate kernel to widen."""
    exact = torch.promote_types(x.dtype, torch.float32)
    return (grad_out.T.to(exact) @ x.to(exact)).to(out_dtype)


@weight_gradient.register_kernel("cuda")
def _weight_gradient_cuda(grad_out, x, out_dtype):
    if not (out_dtype in (torch.float32, x.dtype) and _takes((grad_out, x), widths=(x.shape[1], grad_out.shape[1]))):
        return (grad_out.T @ x).to(out_dtype)
    out = x.new_empty((grad_out.shape[1], x.shape[1]), dtype=out_dtype)
    # column-major: out^T (K x N) = x^T (K x M, x's rows read as columns) @ grad_out (M x N, transposed)
    matmul(out, (x, OP_N), (grad_out, OP_T), rows_out=x.shape[1], cols_out=grad_out.shape[1], inner=x.shape[0])
    return out


@weight_gradient.register_fake
def _(grad_out, x, out_dtype):
    return x.new_empty((grad_out.shape[1], x.shape[1]), dtype=out_dtype)


@torch.library.custom_op("workbench::scaled_mm", mutates_args=())
def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
              out_dtype: torch.dtype, fast_accum: bool) -> torch.Tensor:
    """torch._scaled_mm(a, b, ...) for float8 a (M, K) row-major and b (K, N) column-major, with
    one-element fp32 scales."""
    return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype, use_fast_accum=fast_accum)


@scaled_mm.register_kernel("cuda")
def _scaled_mm_cuda(a, b, scale_a, scale_b, out_dtype, fast_accum):
    if not loadable():
        return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype, use_fast_accum=fast_accum)
    out = a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)
    # column-major: out^T (N x M) = b^T (N x K: b column-major, transposed) @ a^T (K x M)
    matmul(out, (b.T, OP_T), (a, OP_N), rows_out=b.shape[1],
           cols_out=a.shape[0], inner=a.shape[1], scales=(scale_b, scale_a), fast_accum=fast_accum)
    return out


@scaled_mm.register_fake
def _(a, b, scale_a, scale_b, out_dtype, fast_accum):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)


def _takes(operands, widths):
    """Whether the custom ops call cuBLASLt for these operands: the library loaded, the operands all
    bf16 or all fp16, and every row width (of an operand or the output) a multiple of 8 elements, so
    rows are 16-byte multiples as cuBLASLt wants them; torch's own matmul runs otherwise."""
    dtype = operands[0].dtype
    return (loadable() and dtype in (torch.bfloat16, torch.float16) and all(t.dtype == dtype for t in operands)
            and all(width % 8 == 0 for width in widths))


def _alignment(tensor):
    """The largest power of two up to MAX_ALIGNMENT that the tensor's address is a multiple of."""
    address = tensor.data_ptr()
    return min(MAX_ALIGNMENT, address & -address) if address else MAX_ALIGNMENT


def _operand(matrix):
    """matrix itself where cuBLASLt can read it in place (rows contiguous and not overlapping, its
    start and row stride 16-byte aligned: the row stride becomes the leading dimension), else a
    contiguous copy."""
    aligned = _alignment(matrix) >= 16 and matrix.stride(0) * matrix.element_size() % 16 == 0
    in_place = matrix.stride(1) == 1 and matrix.stride(0) >= matrix.shape[1] and aligned
    return matrix if in_place else matrix.contiguous()


class _CublasLt:
    """The few cuBLASLt calls a matmul with an epilogue needs; descriptors and the heuristic's
    algorithm cached per shape (the pointers are set on each call)."""

    def __init__(self, library):
        pointer, pointer_out = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        integer, size = ctypes.c_int, ctypes.c_size_t
        signatures = {
            "cublasLtMatmulDescCreate": [pointer_out, integer, integer],
            "cublasLtMatmulDescSetAttribute": [pointer, integer, pointer, size],
            "cublasLtMatrixLayoutCreate": [pointer_out, integer, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64],
            "cublasLtMatmulPreferenceCreate": [pointer_out],
            "cublasLtMatmulPreferenceSetAttribute": [pointer, integer, pointer, size],
            "cublasLtMatmulAlgoGetHeuristic": [pointer] * 7 + [integer, pointer, ctypes.POINTER(integer)],
            "cublasLtMatmul": [pointer] * 14 + [size, pointer],
        }
        for name, arguments in signatures.items():
            function = getattr(library, name)
            function.argtypes, function.restype = arguments, ctypes.c_int
        self.lib = library
        self.plans = {}  # shape key: (descriptor, layouts of a, b and out, algorithm)
        self.workspaces = {}

    def matmul(self, out, a, b, rows_out, cols_out, inner, epilogue, bias=None, aux=None, scales=None,
               fast_accum=False):
        """out (column-major rows_out x cols_out, i.e. a row-major tensor of cols_out rows) =
        op(a) @ op(b), each operand a (tensor whose rows are contiguous, OP_N or OP_T) read as
        column-major with its row stride as leading dimension. Float8 operands take scales, (a's,
        b's) one-element fp32 tensors, and fast_accum. The first call of a shape times the
        heuristic's candidate algorithms on these tensors and keeps the fastest (as
        cudnn.benchmark does)."""
        key = (rows_out, cols_out, inner, a[1], b[1], epilogue, DATA_TYPES[a[0].dtype], DATA_TYPES[b[0].dtype],
               DATA_TYPES[out.dtype], a[0].stride(0), b[0].stride(0), fast_accum,
               _alignment(a[0]), _alignment(b[0]), _alignment(out), out.device.index)
        if key not in self.plans:
            desc, layouts, candidates = self._plan(*key[:-1])
            self.plans[key] = (desc, layouts, None)
            timings = self._time_each([functools.partial(self._run, key, out, a, b, bias, aux, scales, algo)
                                       for algo in candidates])
            fastest = min(range(len(candidates)), key=timings.__getitem__)
            self.plans[key] = (desc, layouts, candidates[fastest])
        self._run(key, out, a, b, bias, aux, scales)

    def _run(self, key, out, a, b, bias, aux, scales, algo=None):
        desc, layouts, chosen = self.plans[key]
        for attribute, tensor in ((DESC_BIAS_POINTER, bias), (DESC_AUX_POINTER, aux),
                                  *zip((DESC_A_SCALE_POINTER, DESC_B_SCALE_POINTER), scales or ())):
            if tensor is not None:
                self._set(desc, attribute, ctypes.c_void_p(tensor.data_ptr()))
        alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
        workspace = self._workspace(out.device)
        self._check(self.lib.cublasLtMatmul(
            ctypes.c_void_p(torch.cuda.current_blas_handle()), desc, ctypes.byref(alpha),
            ctypes.c_void_p(a[0].data_ptr()), layouts[0], ctypes.c_void_p(b[0].data_ptr()), layouts[1],
            ctypes.byref(beta), ctypes.c_void_p(out.data_ptr()), layouts[2],  # C (unread: beta is 0) and D
            ctypes.c_void_p(out.data_ptr()), layouts[2],
            ctypes.byref(chosen if algo is None else algo), ctypes.c_void_p(workspace.data_ptr()),
            ctypes.c_size_t(WORKSPACE_BYTES), ctypes.c_void_p(torch.cuda.current_stream(out.device).cuda_stream)),
            "cublasLtMatmul")

    @staticmethod
    def _time_each(runs, rounds=3, repeats=3):
        """Milliseconds per call of each run: after a warm-up round over all of them, the best of
        rounds interleaved rounds, so a GPU clock still ramping up slows every candidate alike."""
        for run in runs:
            run()
        best = [float("inf")] * len(runs)
        for _ in range(rounds):
            for i, run in enumerate(runs):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(repeats):
                    run()
                end.record()
                end.synchronize()
                best[i] = min(best[i], start.elapsed_time(end) / repeats)
        return best

    def _plan(self, rows_out, cols_out, inner, op_a, op_b, epilogue, type_a, type_b, type_out, ld_a, ld_b,
              fast_accum, align_a, align_b, align_out):
        """(descriptor, layouts, candidate algorithms) for one shape, layout, epilogue and the operands'
        address alignments (algorithms that need more are left out, as PyTorch's own cuBLASLt calls do)."""
        desc = ctypes.c_void_p()
        self._check(self.lib.cublasLtMatmulDescCreate(ctypes.byref(desc), CUBLAS_COMPUTE_32F, CUDA_R_32F),
                    "cublasLtMatmulDescCreate")
        self._set(desc, DESC_TRANSA, ctypes.c_int32(op_a))
        self._set(desc, DESC_TRANSB, ctypes.c_int32(op_b))
        self._set(desc, DESC_EPILOGUE, ctypes.c_int32(epilogue))
        self._set(desc, DESC_AUX_LD, ctypes.c_int64(rows_out))
        if fast_accum:
            self._set(desc, DESC_FAST_ACCUM, ctypes.c_int8(1))
        shape_a = (inner, rows_out) if op_a == OP_T else (rows_out, inner)
        shape_b = (cols_out, inner) if op_b == OP_T else (inner, cols_out)
        layouts = [self._layout(type_a, *shape_a, ld_a), self._layout(type_b, *shape_b, ld_b),
                   self._layout(type_out, rows_out, cols_out, rows_out)]
        preference = ctypes.c_void_p()
        self._check(self.lib.cublasLtMatmulPreferenceCreate(ctypes.byref(preference)), "cublasLtMatmulPreferenceCreate")
        self._prefer(preference, PREF_MAX_WORKSPACE_BYTES, ctypes.c_uint64(WORKSPACE_BYTES))
        for attribute, alignment in zip(PREF_MIN_ALIGNMENT_BYTES, (align_a, align_b, align_out, align_out)):
            self._prefer(preference, attribute, ctypes.c_uint32(alignment))
        results, found = (_HeuristicResult * CANDIDATE_ALGORITHMS)(), ctypes.c_int(0)
        self._check(self.lib.cublasLtMatmulAlgoGetHeuristic(
            ctypes.c_void_p(torch.cuda.current_blas_handle()), desc, layouts[0], layouts[1], layouts[2], layouts[2],
            preference, CANDIDATE_ALGORITHMS, results, ctypes.byref(found)), "cublasLtMatmulAlgoGetHeuristic")
        if found.value == 0:
            raise RuntimeError(f"cuBLASLt has no algorithm for epilogue {epilogue} at {rows_out}x{cols_out}x{inner}")
        return desc, layouts, [results[i].algo for i in range(found.value)]

    def _prefer(self, preference, attribute, value):
        self._check(self.lib.cublasLtMatmulPreferenceSetAttribute(preference, attribute, ctypes.byref(value),
                                                                 ctypes.sizeof(value)),
                    "cublasLtMatmulPreferenceSetAttribute")

    def _layout(self, data_type, rows, cols, leading_dimension):
        layout = ctypes.c_void_p()
        self._check(self.lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), data_type, ctypes.c_uint64(rows),
                                                        ctypes.c_uint64(cols), ctypes.c_int64(leading_dimension)),
                    "cublasLtMatrixLayoutCreate")
        return layout

    def _set(self, desc, attribute, value):
        self._check(self.lib.cublasLtMatmulDescSetAttribute(desc, attribute, ctypes.byref(value),
                                                            ctypes.sizeof(value)), "cublasLtMatmulDescSetAttribute")

    def _workspace(self, device):
        if device not in self.workspaces:
            self.workspaces[device] = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        return self.workspaces[device]

    @staticmethod
    def _check(status, call):
        if status != 0:
            raise RuntimeError(f"{call} failed with cuBLAS status {status}")


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves_count", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


_LIBRARY = []  # [the _CublasLt, or None when the library cannot be loaded], filled on first use


@torch.compiler.assume_constant_result  # torch.compile takes the answer as a constant instead of tracing ctypes
def loadable():
    """Whether libcublasLt can be called (CUDA present, the library found)."""
    return _cublaslt() is not None


def reserve_workspace(device):
    """Loads the library and allocates its workspace on device (a CUDA device; others are left
    alone) now, before a compiled step runs. Under CUDA graphs (compile_mode reduce-overhead) the
    step's first calls run inside the graphs' memory pool, which must not keep a tensor the graph did
    not return: a workspace allocated there stops the run ("Detected 1 tensor(s) in the cudagraph pool
    not tracked as outputs", seen on an H100 with the llama and team presets, whose first cuBLASLt
    call is inside the step; reserved here, all four presets run under graphs)."""
    device = torch.device(device)
    if device.type != "cuda" or not loadable():
        return
    _cublaslt()._workspace(torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index))


def matmul(out, a, b, rows_out, cols_out, inner, epilogue=EPILOGUE_DEFAULT, bias=None, aux=None, scales=None,
           fast_accum=False):
    """out = op(a) @ op(b) in column-major terms, as _CublasLt.matmul says, a and b (tensor, op) pairs;
    an operand cuBLASLt cannot read in place is copied first (_operand). loadable() must be True."""
    a, b = (_operand(a[0]), a[1]), (_operand(b[0]), b[1])
    _cublaslt().matmul(out, a, b, rows_out, cols_out, inner, epilogue, bias, aux, scales, fast_accum)


def _cublaslt():
    if not _LIBRARY:
        _LIBRARY.append(_load_cublaslt())
    return _LIBRARY[0]


def _load_cublaslt():
    if not torch.cuda.is_available():
        return None
    # the copy PyTorch loaded comes first: its cuBLAS handle is only valid with that cuBLASLt
    for name in mapped_libraries("libcublasLt.so") + list(LIBRARY_NAMES):
        try:
            library = _CublasLt(ctypes.CDLL(name))
        except (OSError, AttributeError):  # not there, or not a cuBLASLt with these functions
            continue
        return library
    warnings.warn("libcublasLt could not be loaded: the matmuls run through torch, without the fused GELU epilogues")
    return None


def mapped_libraries(stem):
    """Paths of the shared libraries whose file name starts with stem that this process has loaded
    (Linux's /proc/self/maps; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if len(line.split()) >= 6}
    except OSError:
        return []
    return sorted(path for path in paths if os.path.basename(path).startswith(stem))
