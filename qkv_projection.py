"""The attention's fused q/k/v projection with a backward that gathers the three gradients and sums
the bias gradient in one pass (a Triton kernel, CUDA only).

The attention kernel returns the gradients of q, k and v as three (B, heads, T, head_dim) tensors.
The projection's weight and input gradients need them side by side as one (B*T, width) matrix, and
its bias gradient is that matrix's column sum. Written in torch, torch.compile makes that two
kernels: a copy that gathers the matrix, and a sum that reads the three gradients again. Here one
kernel writes the matrix and each tile's column sums, so the gradients are read once. Measured on an
H100 at GPT-2 124M sizes: 122 us per layer against 97.5 + 51 us, and +0.5-0.7% tokens/s per step.
The forward product is cublaslt's tuned linear (0.161 against 0.180 ms at those sizes).

project(x, linear, (n_head, n_kv_head, n_kv_head), head_dim) returns q (B, T, n_head, head_dim) and k, v
(B, T, n_kv_head, head_dim), views of one projection as `linear(x).split(...)` gives them.
"""
import torch
from torch import nn

import cublaslt  # noqa: F401  (registers workbench::linear, the tuned matmul)
import hardware

try:
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError:  # CPU builds without triton: applies() is False and the plain path runs
    triton = None

GATHER_TOKENS, GATHER_WARPS = 256, 8  # tokens per program, warps: the fastest measured at GPT-2 124M sizes on an H100


def applies(linear, x):
    """Whether project() runs this projection on x: CUDA, a plain nn.Linear (not float8 or another
    subclass) with a bias (without one there is no sum to fold in), and triton installed."""
    return x.is_cuda and triton is not None and type(linear) is nn.Linear and linear.bias is not None


def project(x, linear, heads, head_dim):
    """q, k, v = linear(x) split into (n_head, n_kv_head, n_kv_head) = heads heads, with the gradient
    gather of this module in backward."""
    dtype = hardware.matmul_dtype(x)
    B, T, C = x.shape
    with torch.autocast(x.device.type, enabled=False):
        return _QKVProjection.apply(x.reshape(B * T, C).to(dtype), linear.weight, linear.bias, B, heads, head_dim)


class _QKVProjection(torch.autograd.Function):
    """The weight and bias are cast to x's dtype inside, so that their gradients come back in the
    parameters' own dtype (fp32 under autocast) straight from the matmul and the gather, with no
    separate kernel widening them."""

    @staticmethod
    def forward(ctx, x, weight, bias, batch, heads, head_dim):
        cast_weight = weight.to(x.dtype)
        ctx.save_for_backward(x, cast_weight)
        ctx.weight_dtype, ctx.bias_dtype = weight.dtype, bias.dtype
        out = torch.ops.workbench.linear(x, cast_weight, bias.to(x.dtype)).view(batch, -1, sum(heads), head_dim)
        return tuple(out.split(heads, dim=2))

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):
        x, weight = ctx.saved_tensors
        grad_out, grad_bias = torch.ops.workbench.gather_qkv_gradient(grad_q, grad_k, grad_v)
        return (grad_out @ weight, torch.ops.workbench.weight_gradient(grad_out, x, ctx.weight_dtype),
                grad_bias.to(ctx.bias_dtype), None, None, None)


if triton is not None:
    @triton.jit
    def _gather_kernel(source_ptr, out_ptr, partial_ptr, tokens, seq_len, head_dim, stride_b, stride_t, stride_h,
                       stride_d, out_width, first_column, BLOCK_TOKENS: tl.constexpr, BLOCK_D: tl.constexpr):
        block, head = tl.program_id(0), tl.program_id(1)
        m = block.to(tl.int64) * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
        d = tl.arange(0, BLOCK_D)
        mask = (m[:, None] < tokens) & (d[None, :] < head_dim)
        b, t = m // seq_len, m % seq_len
        values = tl.load(source_ptr + b[:, None] * stride_b + t[:, None] * stride_t + head * stride_h
                         + d[None, :] * stride_d, mask=mask, other=0.0)
        column = first_column + head * head_dim + d
        tl.store(out_ptr + m[:, None] * out_width + column[None, :], values, mask=mask)
        tl.store(partial_ptr + block * out_width + column, tl.sum(values.to(tl.float32), 0), mask=d < head_dim)

    @triton_op("workbench::gather_qkv_gradient", mutates_args=())
    def gather_qkv_gradient(grad_q: torch.Tensor, grad_k: torch.Tensor,
                            grad_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the gradients as one (B*T, width) matrix, its column sum in fp32) from grad_q (B, T, H, d)
        and grad_k, grad_v (B, T, K, d), any strides; width = (H + 2K) d."""
        B, T, _, head_dim = grad_q.shape
        sources = (grad_q, grad_k, grad_v)
        width, tokens = sum(g.shape[2] for g in sources) * head_dim, B * T
        blocks = triton.cdiv(tokens, GATHER_TOKENS)
        out = torch.empty((tokens, width), dtype=grad_q.dtype, device=grad_q.device)
        partial_sums = torch.empty((blocks, width), dtype=torch.float32, device=grad_q.device)
        first_column = 0
        for source in sources:
            wrap_triton(_gather_kernel)[(blocks, source.shape[2])](
                source, out, partial_sums, tokens, T, head_dim, *source.stride(), width, first_column,
                BLOCK_TOKENS=GATHER_TOKENS, BLOCK_D=triton.next_power_of_2(head_dim), num_warps=GATHER_WARPS)
            first_column += source.shape[2] * head_dim
        return out, partial_sums.sum(0)
