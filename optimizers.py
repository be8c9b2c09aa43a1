"""Optimizers and the learning-rate schedule.

optimizer = adamw | adamwspam | adamwprune:
  adamw       torch AdamW (fused on CUDA), its update on CUDA one Triton kernel (fused_adamw.py) unless
              adamw_kernel=torch
  adamwspam   AdamWSPAM below: AdamW plus spike-aware clipping, spike damping and momentum resets
  adamwprune  AdamWPrune below: torch AdamW whose moments score weights for pruning (pruning.py
              applies the masks; pruning_method=state)
All three decay only parameters with 2+ dimensions.
"""
import math
import warnings

import torch

import fused_adamw
from model_config import ConfigError, _choice_message

OPTIMIZERS = ("adamw", "adamwspam", "adamwprune")
ADAMW_KERNELS = ("auto", "triton", "torch")
ADAMWPRUNE_VARIANTS = ("bitter0", "bitter1", "bitter2")

# A gradient norm is a spike only against at least this many earlier norms: a z-score over fewer
# is mostly noise.
SPIKE_MIN_HISTORY = 10
# What a detected spike does to the first moment before the step's gradient enters it. The second
# moment is left alone: shrinking it would enlarge the steps and lower the clip threshold exactly
# while gradients are spiking.
SPIKE_MOMENTUM_DAMPING = 0.5
# Element-wise clipping waits until v̂ averages this many squared gradients since the start or the
# last reset. With theta=50 an ordinary Gaussian gradient exceeds theta * v̂ about 9% of the time
# when v̂ holds one sample, and about 3e-5 of the time when it holds ten.
SPAM_CLIP_MIN_STEPS = 10


def build_optimizer(model, train_cfg, device):
    """The optimizer train_cfg.optimizer names, with weight decay on matrices and embeddings
    (2+ dims) only: decaying biases and norm gains pulls them toward zero for no benefit."""
    t = train_cfg
    check_optimizer_options(t)
    groups = decay_groups(model, t.weight_decay)
    betas, fused = (t.beta1, t.beta2), device.startswith("cuda")
    if t.optimizer == "adamwspam":
        return AdamWSPAM(groups, lr=t.learning_rate, betas=betas, theta=t.spam_theta, clip=t.spam_enable_clip,
                         spike_threshold=t.spam_spike_threshold, spike_window=t.spam_spike_window,
                         reset_interval=t.spam_interval if t.spam_periodic_reset else 0,
                         warmup_steps=t.spam_warmup_steps if t.spam_warmup else 0)
    if t.optimizer == "adamwprune":
        return AdamWPrune(groups, variant=t.adamwprune_variant, lr=t.learning_rate, betas=betas, fused=fused)
    if adamw_kernel_runs(t.adamw_kernel, device):
        return fused_adamw.AdamW(groups, lr=t.learning_rate, betas=betas)
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=betas, fused=fused)


def adamw_kernel_runs(requested, device):
    """Whether AdamW's update runs fused_adamw's Triton kernel: auto where it can (CUDA, triton
    installed), triton too but with one warning where it cannot, torch never."""
    if requested == "torch":
        return False
    if not fused_adamw.available(device):
        if requested == "triton":
            warnings.warn(f"adamw_kernel=triton ignored: the kernel runs on CUDA devices with triton installed, and "
                          f"the device is {device}; torch's AdamW runs instead.", stacklevel=2)
        return False
    return True


def decay_groups(model, weight_decay):
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def check_optimizer_options(t):
    """ConfigError for a bad optimizer option; TrainConfig.__post_init__ calls this too."""
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(_choice_message("optimizer", t.optimizer, OPTIMIZERS))
    if t.adamw_kernel not in ADAMW_KERNELS:
        raise ConfigError(_choice_message("adamw_kernel", t.adamw_kernel, ADAMW_KERNELS))
    if t.adamwprune_variant not in ADAMWPRUNE_VARIANTS:
        raise ConfigError(_choice_message("adamwprune_variant", t.adamwprune_variant, ADAMWPRUNE_VARIANTS))
    for key in ("spam_theta", "spam_spike_threshold", "bitter2_scale"):
        if not getattr(t, key) > 0:
            raise ConfigError(f"{key}={getattr(t, key)!r} is invalid: it must be a positive number.")
    if t.spam_spike_window < SPIKE_MIN_HISTORY + 1:
        raise ConfigError(f"spam_spike_window={t.spam_spike_window!r} is too small: spikes are judged against at "
                          f"least {SPIKE_MIN_HISTORY} earlier gradient norms, so use {SPIKE_MIN_HISTORY + 1} or more.")
    for key in ("spam_interval", "spam_warmup_steps"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"{key}={getattr(t, key)!r} is invalid: it must be a positive integer "
                              f"(turn the feature off with spam_periodic_reset / spam_warmup instead).")


def effective_max_iters(t):
    """max_iters, times bitter2_scale for adamwprune's bitter2 variant: bitter2 spends the compute
    that sparsity saves on more steps, so it must be compared with dense runs at equal cost."""
    if t.optimizer == "adamwprune" and t.adamwprune_variant == "bitter2":
        return round(t.max_iters * t.bitter2_scale)
    return t.max_iters


def lr_at(step, train_cfg):
    """Linear warmup over warmup_iters, then cosine decay to min_lr at lr_decay_iters (default: the
    effective max_iters), then flat."""
    lr, min_lr, warmup = train_cfg.learning_rate, train_cfg.min_lr, train_cfg.warmup_iters
    if not train_cfg.decay_lr:
        return lr
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    decay_end = train_cfg.lr_decay_iters or effective_max_iters(train_cfg)
    if step >= decay_end:
        return min_lr
    progress = (step - warmup) / max(1, decay_end - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------- AdamWPrune

class AdamWPrune(torch.optim.AdamW):
    """torch AdamW (fused on CUDA) that scores its parameters for pruning from its own moments.

    pruning.Pruner with method "state" asks importance(weight) for every prunable weight and keeps
    the highest-scoring ones. Variants:
      bitter0  |w*m| * |w| / (sqrt(v) + eps): weights Adam moves strongly (momentum) and steadily
               (low gradient variance), weighted by their size
      bitter1  |w|: plain magnitude
      bitter2  |w|, and training runs bitter2_scale times longer (effective_max_iters)
    """

    def __init__(self, params, variant="bitter0", **adamw_options):
        if variant not in ADAMWPRUNE_VARIANTS:
            raise ConfigError(_choice_message("adamwprune_variant", variant, ADAMWPRUNE_VARIANTS))
        super().__init__(params, **adamw_options)
        self.variant = variant

    @torch.no_grad()
    def importance(self, weight):
        magnitude = weight.abs()
        if self.variant != "bitter0":
            return magnitude
        state = self.state[weight]
        stability = state["exp_avg_sq"].sqrt().add_(self.defaults["eps"])
        return (weight * state["exp_avg"]).abs_().mul_(magnitude).div_(stability)


# ---------------------------------------------------------------- AdamWSPAM

def spam_update_scale(steps_since_reset, warmup_steps):
    """Cosine warmup of the update size after a momentum reset: 0 -> 1 over warmup_steps.
    steps_since_reset counts the current step, so the first step after a reset is 1."""
    if warmup_steps <= 0:
        return 1.0
    return 0.5 * (1.0 - math.cos(math.pi * min(steps_since_reset, warmup_steps) / warmup_steps))


class AdamWSPAM(torch.optim.Optimizer):
    """Spike-Aware Adam with Momentum reset (Huang et al., ICLR 2025, arXiv 2501.06842) with
    decoupled weight decay. On each step, in this order:

    1. Periodic reset: after every reset_interval steps (0: never) both moments are zeroed and bias
       correction restarts; the Adam update (not the weight decay) is then scaled by
       spam_update_scale(k, warmup_steps) on the k-th step after the reset.
    2. Spike detection: the pre-clip global gradient norm, handed over by observe_grad_norm(), is a
       spike when its z-score against the previous spike_window non-spike norms exceeds
       spike_threshold (needs SPIKE_MIN_HISTORY norms). A spike multiplies the first moment by
       SPIKE_MOMENTUM_DAMPING before this step's gradient enters it; v is kept. Spikes are counted in
       `spikes` and the step in `last_spike_step` (tensors; spam_stats() reads them); spike norms do
       not enter the window, so one spike does not hide the next. Computed on the device, no sync.
    3. Element-wise clipping (clip=True): where g^2 > theta * v̂, with v̂ the bias-corrected second
       moment before this update, g becomes sign(g) * sqrt(theta * v̂). Skipped until v̂ averages
       SPAM_CLIP_MIN_STEPS gradients since the start or the last reset. The paper compares against
       the uncorrected v; v̂ makes theta mean the same right after a reset as later.
    4. AdamW: p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
       p -= lr * scale * m̂ / (sqrt(v̂) + eps).

    theta: 50 is what the lab uses for GPT-2 (beta2 0.95); the paper uses 5000 with beta2 0.999.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, theta=50.0, clip=True,
                 spike_threshold=2.0, spike_window=100, reset_interval=1000, warmup_steps=100):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.theta, self.clip, self.spike_threshold = theta, clip, spike_threshold
        self.reset_interval, self.warmup_steps = reset_interval, warmup_steps
        self.steps = 0  # optimizer steps taken
        self.steps_since_reset = 0
        self.resets = 0
        self.norms_observed = 0
        device = self.param_groups[0]["params"][0].device
        self.norm_window = torch.full((spike_window,), float("nan"), device=device)  # nan: empty slot
        self.spikes = torch.zeros((), dtype=torch.long, device=device)
        self.last_spike_step = torch.full((), -1, dtype=torch.long, device=device)
        self._grad_norm = None

    def observe_grad_norm(self, grad_norm):
        """The global gradient norm before clipping, for the next step()'s spike detection. A step
        without one skips detection (so does a step the GradScaler skips: its norm is discarded)."""
        self._grad_norm = torch.as_tensor(grad_norm, dtype=torch.float32, device=self.norm_window.device)

    def spam_stats(self):
        """Counters for the training log (synchronises: call at log time only)."""
        last = int(self.last_spike_step)
        return {"spam_spikes": int(self.spikes), "spam_last_spike_step": last if last >= 0 else None,
                "spam_resets": self.resets}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.reset_interval and self.steps and self.steps % self.reset_interval == 0:
            self._reset_moments()
        self.steps += 1
        self.steps_since_reset += 1
        damping = self._detect_spike()
        scale = spam_update_scale(self.steps_since_reset, self.warmup_steps) if self.resets else 1.0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params, damping, scale)
        return loss

    def _update(self, group, params, damping, scale):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        t = self.steps_since_reset
        grads = [p.grad for p in params]
        for p in params:
            if not self.state[p]:
                self.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        if self.clip and t - 1 >= SPAM_CLIP_MIN_STEPS:
            self._clip_spikes(grads, exp_avg_sqs, 1.0 - beta2 ** (t - 1))
        torch._foreach_mul_(exp_avgs, beta1 if damping is None else damping * beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        if wd:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, math.sqrt(1.0 - beta2 ** t))
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=-lr * scale / (1.0 - beta1 ** t))

    def _clip_spikes(self, grads, exp_avg_sqs, bias_correction2):
        limit = torch._foreach_mul(exp_avg_sqs, self.theta / bias_correction2)
        torch._foreach_sqrt_(limit)
        torch._foreach_minimum_(grads, limit)
        torch._foreach_neg_(limit)
        torch._foreach_maximum_(grads, limit)

    def _detect_spike(self):
        """The first-moment factor for this step: a 0-dim tensor (SPIKE_MOMENTUM_DAMPING on a spike,
        else 1), or None when no norm was observed."""
        norm, self._grad_norm = self._grad_norm, None
        if norm is None:
            return None
        window = self.norm_window
        valid = torch.isfinite(window)
        count = valid.sum()
        mean = torch.where(valid, window, 0.0).sum() / count.clamp(min=1)
        std = (torch.where(valid, window - mean, 0.0).square().sum() / (count - 1).clamp(min=1)).sqrt()
        spike = (count >= SPIKE_MIN_HISTORY) & (std > 0) & (norm - mean > self.spike_threshold * std)
        self.spikes += spike
        self.last_spike_step.copy_(torch.where(spike, self.steps, self.last_spike_step))
        window[self.norms_observed % window.numel()] = torch.where(spike, float("nan"), norm)
        self.norms_observed += 1
        return torch.where(spike, SPIKE_MOMENTUM_DAMPING, 1.0)

    def _reset_moments(self):
        for state in self.state.values():
            state["exp_avg"].zero_()
            state["exp_avg_sq"].zero_()
        self.steps_since_reset = 0
        self.resets += 1

    def state_dict(self):
        state = super().state_dict()
        state["spam"] = {"steps": self.steps, "steps_since_reset": self.steps_since_reset, "resets": self.resets,
                         "norms_observed": self.norms_observed, "norm_window": self.norm_window.clone(),
                         "spikes": self.spikes.clone(), "last_spike_step": self.last_spike_step.clone()}
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        if "spam" not in state_dict:
            raise ConfigError("the checkpoint's optimizer state was not written by adamwspam (it has no spike window "
                              "or reset counters); resume with the optimizer the run was trained with.")
        spam = state_dict.pop("spam")
        super().load_state_dict(state_dict)
        self.steps, self.steps_since_reset = spam["steps"], spam["steps_since_reset"]
        self.resets, self.norms_observed = spam["resets"], spam["norms_observed"]
        for name in ("norm_window", "spikes", "last_spike_step"):
            getattr(self, name).copy_(spam[name])
