"""GPT-2's MLP (up projection, tanh GELU, down projection) with the GELU and its gradient computed
inside cuBLASLt's matmul epilogues, as llm.c does.

Written as separate kernels (what torch.compile makes of the MLP), the GELU reads the up projection's
output and writes its own, and in backward the down projection's input gradient is written and read
back with the pre-activation for the GELU gradient. Here the forward matmul writes the GELU output
and the pre-activation directly (epilogue GELU_AUX_BIAS), and the backward matmul writes the
pre-activation's gradient (epilogue DGELU). Measured on an H100 at GPT-2 124M sizes (32768 x 768 x
3072, bf16): forward 0.289 ms against 0.227 (matmul) + 0.141 (GELU), backward 0.286 against 0.227 +
0.203. The bias gradient stays a sum that torch.compile makes: the DGELU_BGRAD epilogue, which would
fold it in, took 0.91 ms. cuBLASLt's GELU is the tanh approximation, GPT-2's. PyTorch does not
expose these epilogues, so this module calls libcublasLt (already loaded by PyTorch's CUDA build)
through ctypes, on PyTorch's cuBLAS handle and current stream.

gelu_mlp(x, up_proj, down_proj) runs the whole MLP as one autograd function; its two epilogue matmuls
are custom ops (opaque to torch.compile, which compiles around them) with a CUDA kernel (cuBLASLt)
and a CPU kernel (plain torch, the reference the tests compare against).
"""
import ctypes
import functools
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import hardware

# values from cublasLt.h / library_types.h (stable across CUDA 11-13)
CUDA_R_16F, CUDA_R_16BF, CUDA_R_32F = 2, 14, 0
CUBLAS_COMPUTE_32F = 68
OP_N, OP_T = 0, 1
DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 3, 4, 7, 8
DESC_AUX_POINTER, DESC_AUX_LD = 11, 12
PREF_MAX_WORKSPACE_BYTES = 1
EPILOGUE_GELU_AUX, EPILOGUE_GELU_AUX_BIAS = 160, 164
EPILOGUE_DGELU = 192
WORKSPACE_BYTES = 32 * 2 ** 20  # NVIDIA's advice for Hopper
CANDIDATE_ALGORITHMS = 8  # the heuristic's best few, timed on first use
LIBRARY_NAMES = ("libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so")
DATA_TYPES = {torch.bfloat16: CUDA_R_16BF, torch.float16: CUDA_R_16F}


def applies(ffn, x):
    """Whether gelu_mlp can run this MLP on x: a CUDA tensor, an MLP that supported() accepts, and
    libcublasLt loadable."""
    return x.is_cuda and supported(ffn, hardware.matmul_dtype(x)) and _cublaslt_loadable()


def supported(ffn, dtype):
    """GPT-2's tanh GELU, plain nn.Linear layers (not replaced by float8 or other subclasses), biases
    on both or neither, sizes that are multiples of 8, and bf16/fp16 matmuls."""
    up, down = ffn.up_proj, ffn.down_proj
    return (ffn.activation_name == "gelu" and type(up) is nn.Linear and type(down) is nn.Linear
            and dtype in DATA_TYPES and up.in_features % 8 == 0 and up.out_features % 8 == 0
            and (up.bias is None) == (down.bias is None))


def gelu_mlp(x, up_proj, down_proj):
    """down_proj(gelu_tanh(up_proj(x))), in the autocast dtype when autocast is on."""
    dtype = hardware.matmul_dtype(x)
    cast = (lambda t: None if t is None else t.to(dtype))
    shape = x.shape
    with torch.autocast(x.device.type, enabled=False):
        out = _GeluMLP.apply(x.reshape(-1, shape[-1]).to(dtype), cast(up_proj.weight), cast(up_proj.bias),
                             cast(down_proj.weight), cast(down_proj.bias))
    return out.reshape(*shape[:-1], out.shape[-1])


class _GeluMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_up, b_up, w_down, b_down):
        hidden, pre_activation = torch.ops.workbench.gelu_up_projection(x, w_up, b_up)
        ctx.save_for_backward(x, w_up, w_down, hidden, pre_activation)
        ctx.has_bias = b_up is not None
        return F.linear(hidden, w_down, b_down)

    @staticmethod
    def backward(ctx, grad_out):
        x, w_up, w_down, hidden, pre_activation = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_pre = torch.ops.workbench.gelu_down_projection_grad(grad_out, w_down, pre_activation)
        return (grad_pre @ w_up, grad_pre.T @ x, grad_pre.sum(0) if ctx.has_bias else None, grad_out.T @ hidden,
                grad_out.sum(0) if ctx.has_bias else None)


@torch.library.custom_op("workbench::gelu_up_projection", mutates_args=())
def gelu_up_projection(x: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(gelu_tanh(x @ weight.T + bias), x @ weight.T + bias) for x (M, K), weight (N, K)."""
    pre_activation = F.linear(x, weight, bias)
    return F.gelu(pre_activation, approximate="tanh"), pre_activation


@gelu_up_projection.register_kernel("cuda")
def _gelu_up_projection_cuda(x, weight, bias):
    rows, width = x.shape[0], weight.shape[0]
    hidden = x.new_empty(rows, width)
    pre_activation = x.new_empty(rows, width)
    # column-major view: hidden^T (N x M) = weight (N x K, stored K x N, transposed) @ x^T (K x M)
    _cublaslt().matmul(hidden, (weight.contiguous(), OP_T), (x.contiguous(), OP_N), rows_out=width, cols_out=rows,
                       inner=x.shape[1], epilogue=EPILOGUE_GELU_AUX_BIAS if bias is not None else EPILOGUE_GELU_AUX,
                       bias=bias, aux=pre_activation)
    return hidden, pre_activation


@gelu_up_projection.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0]), x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("workbench::gelu_down_projection_grad", mutates_args=())
def gelu_down_projection_grad(grad_out: torch.Tensor, weight: torch.Tensor,
                              pre_activation: torch.Tensor) -> torch.Tensor:
    """d loss / d pre_activation from grad_out (M, C) = d loss / d (down projection's output) and the
    down projection's weight (C, N)."""
    return torch.ops.aten.gelu_backward(grad_out @ weight, pre_activation, approximate="tanh")


@gelu_down_projection_grad.register_kernel("cuda")
def _gelu_down_projection_grad_cuda(grad_out, weight, pre_activation):
    rows, width = pre_activation.shape
    grad_pre = pre_activation.new_empty(rows, width)
    # column-major view: grad_pre^T (N x M) = weight^T (N x C, stored N x C) @ grad_out^T (C x M)
    _cublaslt().matmul(grad_pre, (weight.contiguous(), OP_N), (grad_out.contiguous(), OP_N), rows_out=width,
                       cols_out=rows, inner=grad_out.shape[1], epilogue=EPILOGUE_DGELU, aux=pre_activation.contiguous())
    return grad_pre


@gelu_down_projection_grad.register_fake
def _(grad_out, weight, pre_activation):
    return pre_activation.new_empty(pre_activation.shape)


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

    def matmul(self, out, a, b, rows_out, cols_out, inner, epilogue, bias=None, aux=None):
        """out (column-major rows_out x cols_out, i.e. a row-major tensor of cols_out rows) =
        op(a) @ op(b), each operand a (contiguous tensor, OP_N or OP_T) read as column-major. The
        first call of a shape times the heuristic's candidate algorithms on these tensors and keeps
        the fastest (as cudnn.benchmark does)."""
        key = (rows_out, cols_out, inner, a[1], b[1], epilogue, DATA_TYPES[out.dtype], out.device.index)
        if key not in self.plans:
            desc, layouts, candidates = self._plan(*key[:-1])
            self.plans[key] = (desc, layouts, None)
            timings = self._time_each([functools.partial(self._run, key, out, a, b, bias, aux, algo)
                                       for algo in candidates])
            fastest = min(range(len(candidates)), key=timings.__getitem__)
            self.plans[key] = (desc, layouts, candidates[fastest])
        self._run(key, out, a, b, bias, aux)

    def _run(self, key, out, a, b, bias, aux, algo=None):
        desc, layouts, chosen = self.plans[key]
        if bias is not None:
            self._set(desc, DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
        if aux is not None:
            self._set(desc, DESC_AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
        alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
        workspace = self.workspace(out.device)
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

    def _plan(self, rows_out, cols_out, inner, op_a, op_b, epilogue, data_type):
        """(descriptor, layouts, candidate algorithms) for one shape and epilogue."""
        desc = ctypes.c_void_p()
        self._check(self.lib.cublasLtMatmulDescCreate(ctypes.byref(desc), CUBLAS_COMPUTE_32F, CUDA_R_32F),
                    "cublasLtMatmulDescCreate")
        self._set(desc, DESC_TRANSA, ctypes.c_int32(op_a))
        self._set(desc, DESC_TRANSB, ctypes.c_int32(op_b))
        self._set(desc, DESC_EPILOGUE, ctypes.c_int32(epilogue))
        self._set(desc, DESC_AUX_LD, ctypes.c_int64(rows_out))
        shape_a = (inner, rows_out) if op_a == OP_T else (rows_out, inner)
        shape_b = (cols_out, inner) if op_b == OP_T else (inner, cols_out)
        layouts = [self._layout(data_type, *shape) for shape in (shape_a, shape_b, (rows_out, cols_out))]
        preference = ctypes.c_void_p()
        self._check(self.lib.cublasLtMatmulPreferenceCreate(ctypes.byref(preference)), "cublasLtMatmulPreferenceCreate")
        workspace = ctypes.c_uint64(WORKSPACE_BYTES)
        self._check(self.lib.cublasLtMatmulPreferenceSetAttribute(preference, PREF_MAX_WORKSPACE_BYTES,
                                                                 ctypes.byref(workspace), ctypes.sizeof(workspace)),
                    "cublasLtMatmulPreferenceSetAttribute")
        results, found = (_HeuristicResult * CANDIDATE_ALGORITHMS)(), ctypes.c_int(0)
        self._check(self.lib.cublasLtMatmulAlgoGetHeuristic(
            ctypes.c_void_p(torch.cuda.current_blas_handle()), desc, layouts[0], layouts[1], layouts[2], layouts[2],
            preference, CANDIDATE_ALGORITHMS, results, ctypes.byref(found)), "cublasLtMatmulAlgoGetHeuristic")
        if found.value == 0:
            raise RuntimeError(f"cuBLASLt has no algorithm for epilogue {epilogue} at {rows_out}x{cols_out}x{inner}")
        return desc, layouts, [results[i].algo for i in range(found.value)]

    def _layout(self, data_type, rows, cols):
        layout = ctypes.c_void_p()
        self._check(self.lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), data_type, ctypes.c_uint64(rows),
                                                        ctypes.c_uint64(cols), ctypes.c_int64(rows)),
                    "cublasLtMatrixLayoutCreate")
        return layout

    def _set(self, desc, attribute, value):
        self._check(self.lib.cublasLtMatmulDescSetAttribute(desc, attribute, ctypes.byref(value),
                                                            ctypes.sizeof(value)), "cublasLtMatmulDescSetAttribute")

    def workspace(self, device):
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
def _cublaslt_loadable():
    return _cublaslt() is not None


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
        # the workspace now, before the first matmul: that may run inside a CUDA graph's memory pool
        # (compile_mode=reduce-overhead warms up there), which must not keep a tensor it did not return
        library.workspace(torch.device("cuda", torch.cuda.current_device()))
        return library
    warnings.warn("libcublasLt could not be loaded: the MLP runs without its fused GELU epilogues")
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
