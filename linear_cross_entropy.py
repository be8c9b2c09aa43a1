"""Cross-entropy of a linear layer's output without materialising the whole batch's logits.

With GPT-2's 50304-token vocabulary, a batch of 32 x 1024 tokens has 1.6 G logits: 3.3 GB in
bf16 and twice that in fp32, read and written several times by softmax and its gradient. Here
the rows go through in chunks: each chunk's logits are made, turned into the loss and straight
into the gradients for the hidden states and the weight, then dropped. Backward only scales the
stored gradients. The matmul work is the usual three (forward, and the two gradient products).
"""
import torch


def linear_cross_entropy(hidden, weight, targets, ignore_index=-1, chunk_rows=4096):
    """Mean cross-entropy of hidden @ weight.T against targets, ignoring targets == ignore_index.
    hidden (..., d), weight (V, d), targets (...); matmuls in the autocast dtype when autocast is
    on, softmax in fp32."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk_rows)
        return _chunked_loss(hidden, weight, targets, ignore_index, chunk_rows, gradients=False)[0]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_rows):
        loss, grad_hidden, grad_weight = _chunked_loss(hidden, weight, targets, ignore_index, chunk_rows,
                                                       gradients=True)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss, None, None, None


def _chunked_loss(hidden, weight, targets, ignore_index, chunk_rows, gradients):
    valid = targets != ignore_index
    count = valid.sum().clamp(min=1)
    exact = torch.promote_types(hidden.dtype, torch.float32)  # softmax and sums in at least fp32
    loss = torch.zeros((), dtype=exact, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if gradients else None
    grad_weight = torch.zeros(weight.shape, dtype=exact, device=weight.device) if gradients else None
    for start in range(0, hidden.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        chunk_targets, chunk_valid = targets[rows].clamp(min=0), valid[rows]
        logits = (hidden[rows] @ weight.T).to(exact)
        log_norm = torch.logsumexp(logits, dim=-1)
        target_logits = logits.gather(1, chunk_targets[:, None]).squeeze(1)
        loss += ((log_norm - target_logits) * chunk_valid).sum()
        if gradients:
            # d loss / d logits = (softmax - one_hot(target)) / count on valid rows, 0 elsewhere
            probs = logits.sub_(log_norm[:, None]).exp_()
            probs[torch.arange(probs.shape[0], device=probs.device), chunk_targets] -= 1
            probs *= (chunk_valid / count)[:, None]
            grad_logits = probs.to(weight.dtype)
            grad_hidden[rows] = grad_logits @ weight
            grad_weight += grad_logits.T @ hidden[rows]
    return loss / count, grad_hidden, grad_weight.to(weight.dtype) if gradients else None
