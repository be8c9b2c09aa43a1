"""Loss estimates on held-out and training data."""
import math

import torch


@torch.no_grad()
def estimate_loss(model, loaders, eval_iters, autocast):
    """Mean loss over eval_iters batches of each loader ({split name: loader}), model in eval mode."""
    was_training = model.training
    model.eval()
    losses = {}
    for split, loader in loaders.items():
        total = 0.0
        for _ in range(eval_iters):
            x, y = loader.next_batch()
            with autocast:
                _, loss = model(x, y)
            total = total + loss.float()  # stays on the device: one sync per split, not per batch
        losses[split] = (total / eval_iters).item()
    model.train(was_training)
    return losses


def perplexity(loss):
    return math.exp(loss) if loss < 700 else float("inf")
