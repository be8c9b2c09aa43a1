"""Pruning: boolean masks on the transformer blocks' linear weights, tightened on a schedule.

pruning_method = none | magnitude | movement | state
  magnitude  keep the largest |w|, one threshold over all prunable weights
  movement   Sanh et al. 2020 (arXiv 2005.07683): scores accumulate -w * grad every step and the
             highest scores are kept; a pruned weight keeps its last value aside and grows back with
             it when its score climbs above the threshold again
  state      AdamWPrune's importance (optimizers.py: bitter0/1/2); only with optimizer=adamwprune

Prunable: every nn.Linear weight inside model.blocks; never embeddings, the LM head or norms.
Sparsity follows sparsity_at(): 0 until pruning_warmup steps, the target at pruning_ramp_end, masks
recomputed every pruning_frequency steps in between and fixed afterwards.

In the training step (train_step.py) and the loops around it (train.py, bench.py):
    pruner.before_clip()                in train_step, after unscaling, before clip_grad_norm_:
                                        movement scores, then gradients of pruned weights set to 0
    pruner.after_step(optimizer, step)  in the loop, after the step: masks updated when due
When masks change they are applied to the weights and to both Adam moments. Between updates
nothing else is needed: a weight with zero value, gradient and moments gets an AdamW update of
exactly 0 (0 / (0 + eps)) and a weight decay of 0, so pruned weights stay exactly zero.
"""
import torch
from torch import nn

from checkpointing import clean_name
from model_config import ConfigError, _choice_message
from optimizers import AdamWPrune, effective_max_iters

PRUNING_METHODS = ("none", "magnitude", "movement", "state")
SCHEDULES = ("cubic", "linear")


def prunable_weights(model):
    """{parameter name: weight} of every nn.Linear inside model.blocks, named as in model.state_dict()."""
    return {clean_name(f"blocks.{name}.weight"): module.weight for name, module in model.blocks.named_modules()
            if isinstance(module, nn.Linear)}


def sparsity_at(step, target, warmup, ramp_end, schedule="cubic"):
    """Scheduled sparsity after `step` optimizer steps. cubic (Zhu & Gupta 2017):
    s = target * (1 - (1 - p)^3) with p = (step - warmup) / (ramp_end - warmup) clamped to [0, 1],
    pruning fast while the network has redundant weights and gently near the target; linear: target * p."""
    progress = min(max((step - warmup) / (ramp_end - warmup), 0.0), 1.0)
    if schedule == "linear":
        return target * progress
    return target * (1.0 - (1.0 - progress) ** 3)


def pruning_method_for(t):
    """pruning_method, with None meaning state for adamwprune and none otherwise."""
    if t.pruning_method is None:
        return "state" if t.optimizer == "adamwprune" else "none"
    return t.pruning_method


def ramp_end_for(t):
    """pruning_ramp_end, with None meaning 3/4 of the (effective) max_iters: the last quarter trains
    at the final sparsity so the network can recover."""
    return t.pruning_ramp_end if t.pruning_ramp_end is not None else effective_max_iters(t) * 3 // 4


def check_pruning_options(t):
    """ConfigError for a bad pruning option; TrainConfig.__post_init__ calls this too."""
    method = pruning_method_for(t)
    if method not in PRUNING_METHODS:
        raise ConfigError(_choice_message("pruning_method", method, PRUNING_METHODS))
    if t.pruning_schedule not in SCHEDULES:
        raise ConfigError(_choice_message("pruning_schedule", t.pruning_schedule, SCHEDULES))
    if method == "state" and t.optimizer != "adamwprune":
        raise ConfigError(f"pruning_method='state' needs optimizer='adamwprune' (got optimizer={t.optimizer!r}): "
                          f"state pruning scores weights from AdamWPrune's moments. Use optimizer=adamwprune, "
                          f"or pruning_method=magnitude or movement with {t.optimizer}.")
    if t.optimizer == "adamwprune" and method != "state":
        raise ConfigError(f"optimizer='adamwprune' prunes from its own state, so pruning_method must be 'state' "
                          f"(or unset), not {method!r}. Use optimizer=adamw with pruning_method={method}.")
    if method == "none":
        return
    if not 0.0 <= t.target_sparsity < 1.0:
        raise ConfigError(f"target_sparsity={t.target_sparsity!r} is invalid: it is the fraction of prunable "
                          f"weights set to zero, at least 0 and below 1 (0.5 prunes half).")
    if t.pruning_frequency <= 0 or t.pruning_warmup < 0:
        raise ConfigError(f"pruning_frequency={t.pruning_frequency!r} must be positive and pruning_warmup="
                          f"{t.pruning_warmup!r} must not be negative.")
    if ramp_end_for(t) <= t.pruning_warmup:
        raise ConfigError(f"pruning_ramp_end={ramp_end_for(t)} (from pruning_ramp_end={t.pruning_ramp_end!r}, "
                          f"max_iters={t.max_iters}) must come after pruning_warmup={t.pruning_warmup}: sparsity "
                          f"ramps from 0 at pruning_warmup to target_sparsity at pruning_ramp_end.")


def build_pruner(model, t):
    """The Pruner the training options ask for, or None for pruning_method none."""
    check_pruning_options(t)
    method = pruning_method_for(t)
    if method == "none":
        return None
    return Pruner(model, method, t.target_sparsity, t.pruning_warmup, ramp_end_for(t), t.pruning_frequency,
                  t.pruning_schedule)


class Pruner:
    """Masks (torch.bool) on prunable_weights(model), updated on the sparsity schedule."""

    def __init__(self, model, method, target_sparsity, warmup, ramp_end, frequency, schedule="cubic"):
        if method not in PRUNING_METHODS[1:]:
            raise ConfigError(_choice_message("pruning_method", method, PRUNING_METHODS[1:]))
        self.method, self.target_sparsity, self.schedule = method, target_sparsity, schedule
        self.warmup, self.ramp_end, self.frequency = warmup, ramp_end, frequency
        self.weights = prunable_weights(model)
        self.masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in self.weights.items()}
        movement = method == "movement"
        self.scores = {name: torch.zeros_like(w) for name, w in self.weights.items()} if movement else {}
        # values of pruned weights, kept for when they grow back (movement only; zero where kept)
        self.dormant = {name: torch.zeros_like(w) for name, w in self.weights.items()} if movement else {}
        self.sparsity = 0.0  # scheduled sparsity of the last mask update
        self.step = 0  # optimizer steps seen by after_step

    @torch.no_grad()
    def before_clip(self):
        """Movement scores from this step's full gradient, then pruned weights' gradients zeroed."""
        with_grads = {name: w for name, w in self.weights.items() if w.grad is not None}
        if self.method == "movement" and self.step < self.ramp_end:
            for name, w in with_grads.items():
                # a GradScaler overflow step has inf gradients; it must not poison the scores
                movement = torch.nan_to_num((w + self.dormant[name]) * w.grad, nan=0.0, posinf=0.0, neginf=0.0)
                self.scores[name].sub_(movement)
        if self.sparsity > 0:
            torch._foreach_mul_([w.grad for w in with_grads.values()], [self.masks[name] for name in with_grads])

    @torch.no_grad()
    def after_step(self, optimizer, step):
        """step: optimizer steps completed. Updates the masks when the schedule says so."""
        self.step = step
        if not self.warmup <= step <= self.ramp_end:
            return
        if (step - self.warmup) % self.frequency and step != self.ramp_end:
            return
        # never lower: resuming with a larger max_iters stretches the default ramp_end mid-run
        sparsity = max(sparsity_at(step, self.target_sparsity, self.warmup, self.ramp_end, self.schedule),
                       self.sparsity)
        if sparsity > 0:
            self._update_masks(optimizer, sparsity)

    def _update_masks(self, optimizer, sparsity):
        scores = {name: self._importance(name, w, optimizer) for name, w in self.weights.items()}
        flat = torch.cat([s.flatten().float() for s in scores.values()])
        to_prune = round(sparsity * flat.numel())
        # one global threshold: the to_prune-th smallest score (pruned when score <= threshold)
        threshold = torch.kthvalue(flat, to_prune).values if to_prune else flat.min() - 1
        del flat
        for name, w in self.weights.items():
            mask = scores[name] > threshold
            if self.method == "movement":
                latent = w + self.dormant[name]
                w.copy_(latent.masked_fill(~mask, 0.0))
                self.dormant[name] = latent.masked_fill_(mask, 0.0)
            else:
                w.masked_fill_(~mask, 0.0)
            self.masks[name] = mask
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in optimizer.state.get(w, {}):
                    optimizer.state[w][moment].masked_fill_(~mask, 0.0)
        self.sparsity = sparsity

    def _importance(self, name, weight, optimizer):
        if self.method == "movement":
            return self.scores[name]
        if self.method == "state":
            if not isinstance(optimizer, AdamWPrune):
                raise ConfigError(f"pruning_method='state' needs optimizer='adamwprune', "
                                  f"got {type(optimizer).__name__}.")
            return optimizer.importance(weight)
        return weight.abs()

    @torch.no_grad()
    def sparsity_report(self):
        """Scheduled and actual sparsity (fraction of prunable weights that are exactly zero),
        overall and per layer. Synchronises with the device: call at log time."""
        zeros = torch.stack([(w == 0).sum() for w in self.weights.values()]).tolist()
        sizes = [w.numel() for w in self.weights.values()]
        return {"sparsity_target": self.sparsity, "sparsity_actual": sum(zeros) / sum(sizes),
                "sparsity_layers": {name: z / n for name, z, n in zip(self.weights, zeros, sizes)}}

    def state_dict(self):
        return {"method": self.method, "sparsity": self.sparsity, "step": self.step,
                "masks": dict(self.masks), "scores": dict(self.scores), "dormant": dict(self.dormant)}

    def load_state_dict(self, state):
        if state["method"] != self.method or set(state["masks"]) != set(self.masks):
            raise ConfigError(f"the checkpoint's pruning state (pruning_method={state['method']!r}, "
                              f"{len(state['masks'])} masks) does not fit this run (pruning_method={self.method!r}, "
                              f"{len(self.masks)} masks); resume with the run's own pruning options.")
        device = next(iter(self.weights.values())).device
        self.sparsity, self.step = state["sparsity"], state["step"]
        for ours, saved in ((self.masks, state["masks"]), (self.scores, state["scores"]),
                            (self.dormant, state["dormant"])):
            ours.update({name: tensor.to(device) for name, tensor in saved.items()})
