"""Cross-entropy of the LM head's output, with its gradients computed in the forward pass.

With GPT-2's 50304-token vocabulary, a batch of 32 x 1024 tokens has 1.6 G logits: 3.3 GB in
bf16. Autograd's plain loss reads them in forward (the log-normaliser), keeps them, and in backward
reads them again to write their gradient. Here the rows go through in chunks, and each chunk's
logits are made, turned into the loss and the logits' gradient by one kernel (Triton on CUDA,
loss_kernels.py; torch elsewhere), then straight into the gradients for the hidden states and the weight, and
dropped. Backward only scales the stored gradients. The matmul work is the usual three (forward,
and the two gradient products).

fp8=True runs those three matmuls in float8 (cublaslt.scaled_mm, compute capability 8.9+): hidden
states and weight in e4m3 with per-tensor scales from their absolute maxima, the logits' gradient
in e5m2 with a fixed scale. The fixed scale needs no pass over the logits: softmax - one_hot lies
in (-1, 1), so times 2^15 it stays under e5m2's largest value (57344), and probabilities down to
2^-31 stay representable.
"""
from dataclasses import dataclass

import torch

import cublaslt  # noqa: F401  (registers workbench::scaled_mm, the tuned float8 matmul)

try:
    import loss_kernels  # a Triton kernel for CUDA tensors
except ImportError:  # no triton (CPU builds of PyTorch): torch's own transposition
    loss_kernels = None

E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max
LOGIT_GRADIENT_SCALE = 2.0 ** 15
KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class LossSettings:
    """How the model turns its last hidden states into the training loss. chunk_rows 0: the plain
    cross-entropy through autograd, over the whole batch's logits; otherwise linear_cross_entropy
    in chunks of chunk_rows tokens, with its matmuls in float8 when fp8."""
    chunk_rows: int = 0
    fp8: bool = False

    def describe(self):
        if not self.chunk_rows:
            return "loss: plain cross-entropy over the whole batch's logits"
        return (f"loss: fused with the LM head in chunks of {self.chunk_rows} tokens, the LM head's matmuls in "
                f"{'float8' if self.fp8 else 'the step dtype'}")


def linear_cross_entropy(hidden, weight, targets, ignore_index=-1, chunk_rows=8192, fp8=False):
    """Mean cross-entropy of hidden @ weight.T against targets, ignoring targets == ignore_index.
    hidden (..., d), weight (V, d), targets (...); matmuls in the autocast dtype when autocast is
    on (float8 with fp8=True; every dimension and chunk_rows must then be multiples of 16),
    softmax in fp32."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk_rows, fp8)
        return _chunked_loss(hidden, weight, targets, ignore_index, chunk_rows, fp8, gradients=False)[0]


def fp8_unsupported(n_embd, vocab_size, rows, chunk_rows):
    """Why the float8 LM head cannot take these sizes (float8 matmuls need multiples of 16), or None."""
    sizes = {"n_embd": n_embd, "vocab_size": vocab_size, "batch_size x block_size": rows,
             "loss_chunk_rows": chunk_rows}
    odd = [f"{name}={value}" for name, value in sizes.items() if value % 16]
    return f"{', '.join(odd)} not a multiple of 16" if odd else None


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_rows, fp8):
        loss, grad_hidden, grad_weight = _chunked_loss(hidden, weight, targets, ignore_index, chunk_rows, fp8,
                                                       gradients=True)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss, None, None, None, None


def _chunked_loss(hidden, weight, targets, ignore_index, chunk_rows, fp8, gradients):
    valid = targets != ignore_index
    count = valid.sum().clamp(min=1)
    raw_targets, targets = targets, targets.clamp(min=0)
    matmuls = (_Float8Matmuls if fp8 else _Matmuls)(hidden, weight, gradients)
    exact = torch.promote_types(hidden.dtype, torch.float32)  # softmax and sums in at least fp32
    loss = torch.zeros((), dtype=exact, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if gradients else None
    grad_weight = None
    # the weight gradient sums over chunks in fp32; one chunk's comes straight in the weight's dtype
    weight_grad_dtype = weight.dtype if hidden.shape[0] <= chunk_rows else exact
    for start in range(0, hidden.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        logits = matmuls.logits(rows)
        if not gradients:
            loss += _token_losses(logits.to(exact), targets[rows], valid[rows])[0].sum()
            continue
        chunk_loss, logit_grad, logit_grad_t = _loss_and_logit_gradient(logits, raw_targets[rows], ignore_index, fp8)
        loss += chunk_loss.to(exact)
        grad_hidden[rows], chunk_grad_weight = matmuls.gradients(logit_grad, logit_grad_t, rows, count,
                                                                 weight_grad_dtype)
        grad_weight = chunk_grad_weight if grad_weight is None else grad_weight.add_(chunk_grad_weight)
    return loss / count, grad_hidden, grad_weight.to(weight.dtype) if gradients else None


def _token_losses(logits, targets, valid):
    log_norm = torch.logsumexp(logits, dim=-1)
    target_logits = logits.gather(1, targets[:, None]).squeeze(1)
    return (log_norm - target_logits) * valid, log_norm


def _loss_and_logit_gradient(logits, targets, ignore_index, fp8):
    """(the chunk's summed loss, (softmax - one_hot) * scale, its transposed copy with fp8 else None),
    0 on rows whose target is ignore_index; softmax in at least fp32. The gradient is float8 e5m2
    scaled by LOGIT_GRADIENT_SCALE with fp8, else in the logits' dtype, unscaled. On CUDA a Triton
    kernel (loss_kernels.py) makes the losses and the gradient, reading each row from memory about once,
    and another the transposed copy."""
    scale = LOGIT_GRADIENT_SCALE if fp8 else 1.0
    if loss_kernels is not None and logits.is_cuda and logits.dtype in KERNEL_DTYPES:
        row_losses, grad = torch.ops.workbench.loss_and_logit_gradient(logits, targets, ignore_index, scale, fp8)
        return row_losses.sum(), grad, torch.ops.workbench.transpose(grad) if fp8 else None
    valid = targets != ignore_index
    exact = logits.to(torch.promote_types(logits.dtype, torch.float32))
    token_losses, log_norm = _token_losses(exact, targets.clamp(min=0), valid)
    one_hot = torch.arange(logits.shape[1], device=logits.device) == targets[:, None]
    probs = torch.exp(exact - log_norm[:, None])
    grad = torch.where(valid[:, None], (probs - one_hot.to(probs.dtype)) * scale, 0.0)
    grad = grad.to(torch.float8_e5m2 if fp8 else logits.dtype)
    return token_losses.sum(), grad, grad.T.contiguous() if fp8 else None


class _Matmuls:
    """The LM head's matmuls in the inputs' dtype."""

    def __init__(self, hidden, weight, gradients):
        self.hidden, self.weight = hidden, weight

    def logits(self, rows):
        return self.hidden[rows] @ self.weight.T

    def gradients(self, logit_grad, logit_grad_t, rows, count, weight_grad_dtype):
        """(d loss / d hidden[rows], this chunk's share of d loss / d weight in weight_grad_dtype) for
        the mean loss over count tokens (divided after the products, so the logits' gradient needs no
        per-batch scale)."""
        return (logit_grad @ self.weight) / count, ((logit_grad.T @ self.hidden[rows]) / count).to(weight_grad_dtype)


class _Float8Matmuls:
    """The LM head's matmuls in float8. scaled_mm wants its first operand row-major and its
    second column-major, so each product reads a transposed copy of one operand: the weight's for
    d hidden, the logits' gradient's for d weight (a pass over it, still cheaper than the bf16 product)."""
    def __init__(self, hidden, weight, gradients):
        self.out_dtype = hidden.dtype
        self.hidden, self.hidden_scale = _to_e4m3(hidden)
        self.weight, self.weight_scale = _to_e4m3(weight)
        if gradients:
            self.hidden_columns = self.hidden.T.contiguous()  # (d, rows): hidden[rows] as a column-major operand
            self.weight_columns = self.weight.T.contiguous()  # (d, V): the weight as a column-major operand

    def logits(self, rows):
        return torch.ops.workbench.scaled_mm(self.hidden[rows], self.weight.T, self.hidden_scale, self.weight_scale,
                                             self.out_dtype, True)

    def gradients(self, logit_grad, logit_grad_t, rows, count, weight_grad_dtype):
        grad_scale = (1.0 / (count * LOGIT_GRADIENT_SCALE)).float()
        grad_hidden = torch.ops.workbench.scaled_mm(logit_grad, self.weight_columns.T, grad_scale, self.weight_scale,
                                                    self.out_dtype, False)
        grad_weight = torch.ops.workbench.scaled_mm(logit_grad_t, self.hidden_columns[:, rows].T, grad_scale,
                                                    self.hidden_scale, weight_grad_dtype, False)
        return grad_hidden, grad_weight


def _to_e4m3(tensor):
    """(tensor in float8 e4m3 scaled to use its range, the scale that multiplies it back)."""
    amax = tensor.abs().max().float().clamp(min=1e-12)
    scaled = (tensor.float() * (E4M3_MAX / amax)).clamp(-E4M3_MAX, E4M3_MAX)
    return scaled.to(torch.float8_e4m3fn), amax / E4M3_MAX
