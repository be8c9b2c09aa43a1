"""One optimizer step: gradient accumulation, mixed precision, clipping, update.

Shared by train.py and bench.py, so a speed-up of one is a speed-up of both.
"""
from dataclasses import dataclass

import torch

import fused_adamw
from distributed import gradient_sync
from linear_cross_entropy import LossSettings


@dataclass
class StepResult:
    loss: torch.Tensor  # mean loss over the micro-batches, detached, on the device
    grad_norm: torch.Tensor  # global gradient norm before clipping
    loss_on_host: torch.Tensor  # the same value, copied to the host as soon as the last forward has made it
    loss_copied: object  # a CUDA event recorded after that copy (None elsewhere: the copy is done)

    def loss_value(self):
        """The loss as a float. Waits for the last forward only, not for the backward and the
        update queued after it, so the next step is queued while this one still runs: waiting for
        the whole step (loss.item()) leaves the GPU idle while the next step is launched."""
        if self.loss_copied is not None:
            self.loss_copied.synchronize()
        return self.loss_on_host.item()


def train_step(model, optimizer, next_batch, accumulation_steps, autocast, grad_clip, scaler=None, pruner=None,
               inspect_gradients=None, loss_settings=LossSettings()):
    """Runs accumulation_steps forward/backward passes on next_batch() and one optimizer update.

    Each micro-batch loss is divided by accumulation_steps so the summed gradients equal the
    gradient of the mean loss over the whole batch. Gradient synchronisation across ranks (DDP,
    FSDP) is skipped on all but the last micro-step. inspect_gradients(), when given, is called
    with the unscaled gradients before clipping (gradient histograms).
    """
    total_loss = torch.zeros((), device=next(model.parameters()).device)
    for micro_step in range(accumulation_steps):
        x, y = next_batch()
        with gradient_sync(model, micro_step == accumulation_steps - 1), autocast:
            loss = model(x, y, loss_settings=loss_settings)[1]  # no reference to logits kept
            scaled = loss / accumulation_steps
            total_loss += scaled.detach()
            if micro_step == accumulation_steps - 1:
                loss_on_host, loss_copied = _copy_to_host(total_loss)
            (scaler.scale(scaled) if scaler else scaled).backward()
    if scaler:
        scaler.unscale_(optimizer)
    if pruner:  # movement scores from the full gradient, then pruned weights' gradients zeroed
        pruner.before_clip()
    if inspect_gradients:
        inspect_gradients()
    if scaler is None and _clips_inside_the_step(optimizer, model):
        grad_norm = _step_clipping_inside(model, optimizer, grad_clip)
    else:
        grad_norm = _clip_then_step(model, optimizer, grad_clip, scaler)
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=total_loss, grad_norm=grad_norm, loss_on_host=loss_on_host, loss_copied=loss_copied)


def _clip_then_step(model, optimizer, grad_clip, scaler):
    """Clips the gradients in place, steps; returns the norm before clipping."""
    # clip_grad_norm_ with an infinite max measures without clipping (grad_clip=0 disables it)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
        grad_norm = grad_norm.full_tensor()
    if hasattr(optimizer, "observe_grad_norm"):  # AdamWSPAM's spike detection needs the pre-clip norm
        optimizer.observe_grad_norm(grad_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return grad_norm


def _clips_inside_the_step(optimizer, model):
    """Whether the optimizer is torch's fused AdamW or fused_adamw's on plain tensors (not FSDP2's
    DTensors): it can divide the gradients by the clipping factor as it reads them. FSDP2 shards
    every parameter or none (distributed.wrap_model shards the root module too), so the first
    parameter says which; asking each of GPT-2's 148 took 0.3 ms of CPU per step."""
    return (type(optimizer) in (torch.optim.AdamW, fused_adamw.AdamW) and optimizer.defaults.get("fused")
            and not hasattr(next(model.parameters()), "full_tensor"))


def _step_clipping_inside(model, optimizer, grad_clip):
    """The same update as _clip_then_step for a fused AdamW, without the pass that multiplies every
    gradient by the clipping factor: the kernel divides each gradient by its grad_scale as it reads it
    (the attribute torch.amp.GradScaler sets for fused optimizers to unscale). Measured on an H100 at
    GPT-2 124M with torch's: 1.829 against 2.002 ms for the norm, the clipping and the step. Returns
    the norm before clipping; torch's kernel writes the clipped gradients back to .grad, fused_adamw's
    leaves them unclipped (train_step clears them next)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads)  # what clip_grad_norm_ measures
    if grad_clip > 0:  # clip_grad_norm_'s factor max_norm / (norm + 1e-6), capped at 1, as a divisor
        optimizer.grad_scale = torch.clamp((grad_norm + 1e-6) / grad_clip, min=1.0)
    try:
        optimizer.step()
    finally:
        optimizer.__dict__.pop("grad_scale", None)
    return grad_norm


def _copy_to_host(value):
    """(a host copy of value, a CUDA event that completes with the copy, or None off CUDA)."""
    if not value.is_cuda:
        return value.clone(), None
    on_host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)  # pinned: the copy does not block
    on_host.copy_(value, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return on_host, copied
