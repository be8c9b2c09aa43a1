"""GPT-2's MLP (up projection, tanh GELU, down projection) with the GELU and its gradient computed
inside cuBLASLt's matmul epilogues, as llm.c does.

Written as separate kernels (what torch.compile makes of the MLP), the GELU reads the up projection's
output and writes its own, and in backward the down projection's input gradient is written and read
back with the pre-activation for the GELU gradient. Here the forward matmul writes the GELU output
and the pre-activation directly (epilogue GELU_AUX_BIAS), and the backward matmul writes the
pre-activation's gradient (epilogue DGELU). Measured on an H100 at GPT-2 124M sizes (32768 x 768 x
3072, bf16): forward 0.289 ms against 0.227 (matmul) + 0.141 (GELU), backward 0.286 against 0.227 +
0.203. cuBLASLt's GELU is the tanh approximation, GPT-2's. PyTorch does not expose these epilogues,
so this module calls libcublasLt through cublaslt.py.

Bias gradients: the DGELU_BGRAD epilogue, which would fold the up projection's bias gradient into the
backward matmul, took 0.91 ms. Instead that bias gradient comes out of the weight-gradient matmul as
one more column (_weight_and_bias_gradients); the down projection's stays a sum torch.compile makes.

gelu_mlp(x, up_proj, down_proj) runs the whole MLP as one autograd function; its two epilogue matmuls
are custom ops (opaque to torch.compile, which compiles around them) with a CUDA kernel (cuBLASLt)
and a CPU kernel (plain torch, the reference the tests compare against), and its down projection is
cublaslt's tuned linear.
"""
import torch
import torch.nn.functional as F
from torch import nn

import cublaslt
import hardware


def applies(ffn, x):
    """Whether gelu_mlp can run this MLP on x: a CUDA tensor, an MLP that supported() accepts, and
    libcublasLt loadable."""
    return x.is_cuda and supported(ffn, hardware.matmul_dtype(x)) and cublaslt.loadable()


def supported(ffn, dtype):
    """GPT-2's tanh GELU, plain nn.Linear layers (not replaced by float8 or other subclasses), biases
    on both or neither, sizes that are multiples of 8, and bf16/fp16 matmuls."""
    up, down = ffn.up_proj, ffn.down_proj
    return (ffn.activation_name == "gelu" and type(up) is nn.Linear and type(down) is nn.Linear
            and dtype in (torch.bfloat16, torch.float16) and up.in_features % 8 == 0 and up.out_features % 8 == 0
            and (up.bias is None) == (down.bias is None))


def gelu_mlp(x, up_proj, down_proj):
    """down_proj(gelu_tanh(up_proj(x))), in the autocast dtype when autocast is on."""
    dtype, shape = hardware.matmul_dtype(x), x.shape
    with torch.autocast(x.device.type, enabled=False):
        out = _GeluMLP.apply(x.reshape(-1, shape[-1]).to(dtype), up_proj.weight, up_proj.bias, down_proj.weight,
                             down_proj.bias)
    return out.reshape(*shape[:-1], out.shape[-1])


class _GeluMLP(torch.autograd.Function):
    """The parameters are cast to x's dtype inside, so that their gradients come back in the
    parameters' own dtype (fp32 under autocast) straight from the matmuls, with no separate kernel
    widening them."""

    @staticmethod
    def forward(ctx, x, w_up, b_up, w_down, b_down):
        cast = (lambda t: None if t is None else t.to(x.dtype))
        w_up_cast, w_down_cast = cast(w_up), cast(w_down)
        hidden, pre_activation = torch.ops.workbench.gelu_up_projection(x, w_up_cast, cast(b_up))
        ctx.save_for_backward(x, w_up_cast, w_down_cast, hidden, pre_activation)
        ctx.parameter_dtype = w_up.dtype
        ctx.has_bias = b_up is not None
        return torch.ops.workbench.linear(hidden, w_down_cast, cast(b_down))

    @staticmethod
    def backward(ctx, grad_out):
        x, w_up, w_down, hidden, pre_activation = ctx.saved_tensors
        dtype = ctx.parameter_dtype
        grad_out = grad_out.contiguous()
        grad_pre = torch.ops.workbench.gelu_down_projection_grad(grad_out, w_down, pre_activation)
        if ctx.has_bias:
            grad_w_up, grad_b_up = _weight_and_bias_gradients(grad_pre, x, dtype)
            grad_b_down = grad_out.sum(0, dtype=dtype)
        else:
            grad_w_up, grad_b_up, grad_b_down = torch.ops.workbench.weight_gradient(grad_pre, x, dtype), None, None
        grad_w_down = torch.ops.workbench.weight_gradient(grad_out, hidden, dtype)
        return grad_pre @ w_up, grad_w_up, grad_b_up, grad_w_down, grad_b_down


def _weight_and_bias_gradients(grad_out, x, dtype):
    """(grad_out.T @ x, grad_out.sum(0)) in dtype from one matmul over x with a column of ones appended
    (and 7 of zeros, to keep its rows 16-byte aligned): the bias gradient then costs one more output
    column instead of a pass over grad_out. At GPT-2 124M sizes (grad_out 32768 x 3072) on an H100:
    0.242 ms for the copy and the matmul against 0.281 for the matmul and the sum."""
    width = x.shape[1]
    padded = torch.cat([x, x.new_ones(x.shape[0], 1), x.new_zeros(x.shape[0], 7)], dim=1)
    product = torch.ops.workbench.weight_gradient(grad_out, padded, dtype)
    # contiguous here, in the compiled graph: autograd would copy a strided gradient eagerly
    return product[:, :width].contiguous(), product[:, width].contiguous()


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
    cublaslt.matmul(hidden, (weight, cublaslt.OP_T), (x, cublaslt.OP_N), rows_out=width,
                    cols_out=rows, inner=x.shape[1], bias=bias, aux=pre_activation,
                    epilogue=cublaslt.EPILOGUE_GELU_AUX_BIAS if bias is not None else cublaslt.EPILOGUE_GELU_AUX)
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
    cublaslt.matmul(grad_pre, (weight, cublaslt.OP_N), (grad_out, cublaslt.OP_N),
                    rows_out=width, cols_out=rows, inner=grad_out.shape[1], epilogue=cublaslt.EPILOGUE_DGELU,
                    aux=pre_activation.contiguous())
    return grad_pre


@gelu_down_projection_grad.register_fake
def _(grad_out, weight, pre_activation):
    return pre_activation.new_empty(pre_activation.shape)
