"""Training options: one frozen dataclass beside ModelConfig, and the pair as one Config.

Every key here and in ModelConfig can be set in a config file or as --key=value.
"""
from dataclasses import asdict, dataclass, field

from model_components import did_you_mean
from model_config import ConfigError, ModelConfig
from hf_interop import check_init_from
from optimizers import check_optimizer_options
from pruning import check_pruning_options, pruning_method_for
from training_logger import LOGGER_BACKENDS, missing_backend_packages

DATA_LOADERS = ("random", "sequential")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ON_CHECKPOINT_ERROR = ("continue", "stop")
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SDPA_KERNELS = ("auto", "flash", "cudnn", "efficient", "math")
ACTIVATION_CHECKPOINTING = ("none", "full", "selective")
FP8_RECIPES = ("tensorwise", "rowwise")
RESIDUAL_DTYPES = ("auto", "float32")


@dataclass(frozen=True)
class TrainConfig:
    # where the weights start
    init_from: str = "scratch"  # scratch | resume (= resume=latest) | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | PATH of a Hugging Face folder
    # data
    dataset: str = "shakespeare_char"  # a folder under data_dir made by data/<dataset>/prepare.py
    data_dir: str = "data"
    data_loader: str = "random"  # random windows (nanoGPT) or sequential epochs over shards
    batch_size: int = 12  # micro-batch, in sequences, per device
    gradient_accumulation_steps: int = 1
    total_batch_size: int | None = None  # tokens per optimizer step; sets gradient_accumulation_steps
    pad_vocab: bool = True  # round the dataset's vocab up to a multiple of 64 (50257 -> 50304)
    # optimisation
    max_iters: int = 5000
    learning_rate: float = 6e-4
    min_lr: float = 6e-5
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None: max_iters
    decay_lr: bool = True
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still measured and logged)
    # optimizer (optimizers.py)
    optimizer: str = "adamw"  # adamw | adamwspam | adamwprune
    adamw_kernel: str = "auto"  # auto (Triton where it runs: fused_adamw.py) | triton | torch (torch's fused AdamW on CUDA)
    spam_theta: float = 50.0  # clip g where g^2 > theta * v_hat (the lab's GPT-2 value; paper: 5000 with beta2 0.999)
    spam_enable_clip: bool = True
    spam_spike_threshold: float = 2.0  # z-score of the pre-clip global grad norm that counts as a spike
    spam_spike_window: int = 100  # recent non-spike grad norms the z-score is taken over (>= 11)
    spam_periodic_reset: bool = True
    spam_interval: int = 1000  # steps between momentum resets
    spam_warmup: bool = True
    spam_warmup_steps: int = 100  # cosine warmup of the update size after each reset
    adamwprune_variant: str = "bitter0"  # bitter0 | bitter1 | bitter2
    bitter2_scale: float = 1.21  # bitter2 trains max_iters * this many steps
    # pruning (pruning.py)
    pruning_method: str | None = None  # none | magnitude | movement | state; None: state with adamwprune, else none
    target_sparsity: float = 0.5  # fraction of the blocks' linear weights set to zero
    pruning_warmup: int = 1000  # steps before the first mask
    pruning_ramp_end: int | None = None  # step the target is reached; None: 3/4 of the effective max_iters
    pruning_frequency: int = 50  # steps between mask updates during the ramp
    pruning_schedule: str = "cubic"  # cubic (Zhu & Gupta 2017) | linear
    # evaluation and logging
    eval_interval: int = 250
    eval_iters: int = 200
    log_interval: int = 10
    out_dir: str = "runs"
    run_name: str | None = None  # None: <arch_preset>-<date>-<time>
    # metrics.jsonl always; plus any of tensorboard, wandb, trackio ([] for none). e.g.
    # --logger_backends=tensorboard,wandb; wandb and trackio need their package installed
    logger_backends: list[str] = field(default_factory=lambda: ["tensorboard"])
    logger_project: str = "gpt-workbench"  # the wandb / trackio project the runs are grouped under
    peak_tflops: float | None = None  # dense peak of one device for the dtype; None: look it up
    histogram_interval: int = 1000  # weight and gradient histograms (tensorboard, wandb) every N steps (0: never)
    log_hparams: bool = True  # configuration beside final metrics (TensorBoard hparams tab, wandb/trackio summary)
    sample_interval: int = 1000  # a generated text sample every N steps and at the end (0: never)
    sample_prompt: str = "\n"
    sample_max_new_tokens: int = 200
    sample_temperature: float = 0.8  # 0 picks the most likely token
    sample_top_k: int | None = 200
    hellaswag_interval: int = 0  # HellaSwag every N steps and at the end (0: never); needs GPT-2 tokens
    hellaswag_examples: int | None = None  # the first N of the 10042 validation examples; None: all
    hellaswag_path: str | None = None  # a local hellaswag_val.jsonl; None: downloaded once into the cache
    hellaswag_cache_dir: str = "~/.cache/gpt-workbench/hellaswag"
    # checkpoints (checkpoint_dir/<run_name>/; see checkpointing.py for the tiers)
    checkpoint_dir: str = "checkpoints"
    checkpoint_interval: int = 250  # latest.pt every N steps (0: only at the end and on shutdown)
    checkpoint_minutes: float | None = None  # also write latest.pt when this much time has passed
    rolling_checkpoint_interval: int = 1000  # rolling_step_XXXXXX.pt every N steps (0: never)
    keep_checkpoints: int = 10  # newest rolling checkpoints kept
    save_epoch_checkpoints: bool = True  # epoch_XXXXX.pt at every epoch boundary, never deleted
    on_checkpoint_error: str = "continue"  # continue | stop, when a write fails (disk full)
    resume: str | None = None  # latest | best | PATH to a .pt file
    max_epochs: int | None = None  # stop at this epoch boundary even before max_iters
    # several GPUs / nodes (torchrun); data parallel is DDP unless one of these is set
    use_zero1: bool = False  # shard optimizer state (ZeroRedundancyOptimizer)
    use_fsdp: bool = False  # shard parameters, gradients and optimizer state (FSDP2 fully_shard per block)
    fsdp_reshard_after_forward: bool = True  # free gathered parameters after forward (less memory, more traffic)
    dist_timeout_minutes: float = 10.0  # a collective waiting longer (a peer died) fails instead of hanging
    # speed (see BENCHMARKS.md for what each is worth)
    loss_chunk_rows: int = 32768  # the fused loss in chunks of this many tokens, never the whole batch's logits (0: plain)
    # auto (CUDA graphs where they work: training_setup.compile_mode_for) | default | reduce-overhead | max-autotune
    # | max-autotune-no-cudagraphs
    compile_mode: str = "auto"
    # programmatic dependent launch of the compiled step's kernels, each waiting for the one before it
    # (dependent_launch.py); None: where it runs, one process (compiled, NVIDIA compute capability 9.0+)
    dependent_launch: bool | None = None
    sdpa_kernel: str = "auto"  # auto | flash | cudnn | efficient | math: the fused attention kernel SDPA may use
    activation_checkpointing: str = "none"  # none | full (every block) | selective (every second block)
    fp8: bool = False  # torchao float8 training on GPUs of compute capability 8.9+; bf16 elsewhere
    fp8_recipe: str = "tensorwise"  # tensorwise | rowwise
    fp8_lm_head: bool | None = None  # the LM head's matmuls in float8 inside the fused loss; None: where they run (bf16 on compute capability 8.9+)
    residual_dtype: str = "auto"  # auto: bf16 residual stream when dtype is bf16, else fp32 | float32 (nanoGPT's autocast)
    # memory (memory_estimate.py)
    dry_run: bool = False  # print model, FLOPs/token, per-GPU memory, RAM and checkpoint disk estimates, then exit
    ignore_memory_check: bool = False  # start even when the estimate exceeds the free device memory
    auto_batch_size: bool = False  # largest micro-batch that runs real steps here; accumulation keeps the global batch
    memory_margin: float = 0.10  # headroom kept beyond the estimate, as a fraction of it
    # system
    seed: int = 1337
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps
    dtype: str = "auto"  # bfloat16 where supported, float16 + GradScaler on older GPUs, float32 on CPU
    compile: bool | None = None  # None: on for CUDA, off elsewhere

    def __post_init__(self):
        for key in ("batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval",
                    "eval_iters", "log_interval"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}={getattr(self, key)!r} is invalid: it must be a positive integer.")
        for key in ("warmup_iters", "lr_decay_iters", "total_batch_size"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"{key}={value!r} is invalid: it must not be negative.")
        for key in ("checkpoint_interval", "rolling_checkpoint_interval", "keep_checkpoints", "histogram_interval",
                    "sample_interval", "hellaswag_interval"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)!r} is invalid: it must be 0 or more.")
        if self.on_checkpoint_error not in ON_CHECKPOINT_ERROR:
            raise ConfigError(f"on_checkpoint_error={self.on_checkpoint_error!r} is not accepted. "
                              f"Accepted values: {', '.join(ON_CHECKPOINT_ERROR)}.")
        for key, accepted in (("compile_mode", COMPILE_MODES), ("sdpa_kernel", SDPA_KERNELS),
                              ("activation_checkpointing", ACTIVATION_CHECKPOINTING), ("fp8_recipe", FP8_RECIPES),
                              ("residual_dtype", RESIDUAL_DTYPES)):
            if getattr(self, key) not in accepted:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not accepted. Accepted values: "
                                  f"{', '.join(accepted)}.")
        if self.loss_chunk_rows < 0:
            raise ConfigError(f"loss_chunk_rows={self.loss_chunk_rows!r} is invalid: use a number of tokens per "
                              f"chunk of the fused loss, or 0 for the plain cross-entropy.")
        if self.fp8_lm_head and not self.loss_chunk_rows:
            raise ConfigError("fp8_lm_head=True needs the fused loss, which loss_chunk_rows=0 turns off: set "
                              "loss_chunk_rows to a number of tokens (a multiple of 16), or fp8_lm_head=False.")
        if not 0 <= self.memory_margin < 1:
            raise ConfigError(f"memory_margin={self.memory_margin!r} is invalid: it is the headroom kept beyond the "
                              f"memory estimate, a fraction at least 0 and below 1 (0.10 keeps 10%).")
        if self.use_zero1 and self.use_fsdp:
            raise ConfigError("use_zero1=True and use_fsdp=True were both set: FSDP already shards optimizer "
                              "state; choose one.")
        check_sharding_supports(self)
        if self.data_loader not in DATA_LOADERS:
            raise ConfigError(f"data_loader={self.data_loader!r} is not accepted. "
                              f"Accepted values: {', '.join(DATA_LOADERS)}.")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} is not accepted. Accepted values: {', '.join(DTYPES)}.")
        check_logger_backends(self.logger_backends)
        check_init_from(self.init_from)
        if self.init_from == "resume" and self.resume is None:
            object.__setattr__(self, "resume", "latest")  # nanoGPT's spelling of resume=latest
        check_optimizer_options(self)
        check_pruning_options(self)
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ConfigError(f"min_lr={self.min_lr!r} must lie between 0 and learning_rate={self.learning_rate!r}.")
        for key in ("sample_max_new_tokens", "sample_top_k", "hellaswag_examples"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"{key}={value!r} is invalid: it must be a positive integer"
                                  f"{'' if key == 'sample_max_new_tokens' else ', or None'}.")
        if self.sample_temperature < 0:
            raise ConfigError(f"sample_temperature={self.sample_temperature!r} is invalid: use 0 (most likely "
                              "token) or a positive number.")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip={self.grad_clip!r} is invalid: use a positive norm, or 0 to disable.")


def check_sharding_supports(t):
    """ZeroRedundancyOptimizer rebuilds the optimizer from its `defaults` and hides its methods, so
    AdamWSPAM and AdamWPrune would silently lose their options and hooks; pruning reads whole
    parameters and their Adam moments, which ZeRO-1 and FSDP shard across ranks."""
    sharding = "use_zero1=True" if t.use_zero1 else "use_fsdp=True" if t.use_fsdp else None
    if sharding is None:
        return
    if t.use_zero1 and t.optimizer != "adamw":
        raise ConfigError(f"optimizer={t.optimizer!r} does not work with use_zero1=True: ZeRO-1 rebuilds the "
                          f"optimizer without its own options and hooks. Use optimizer='adamw' with ZeRO-1, or "
                          f"{t.optimizer} with DDP (the default){' or FSDP' if t.optimizer == 'adamwspam' else ''}.")
    if pruning_method_for(t) != "none":
        raise ConfigError(f"pruning_method={pruning_method_for(t)!r} does not work with {sharding}: the pruner "
                          f"ranks whole parameters and their optimizer state, which are sharded across ranks. "
                          f"Prune with DDP (the default: no use_zero1, no use_fsdp).")


def check_logger_backends(backends):
    for name in backends:
        if name not in LOGGER_BACKENDS:
            raise ConfigError(f"logger_backends={backends!r} names {name!r}, which is not a logger. Accepted: "
                              f"{', '.join(LOGGER_BACKENDS)} (metrics.jsonl is always written)."
                              f"{did_you_mean(name, LOGGER_BACKENDS)}")
    missing = missing_backend_packages(backends)
    if missing:
        raise ConfigError(f"logger_backends={backends!r} needs {' and '.join(missing)}, which is not installed: "
                          f"pip install {' '.join(missing)}, or leave it out of logger_backends (these loggers "
                          f"are optional; metrics.jsonl and TensorBoard need nothing extra).")


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    train: TrainConfig

    def to_dict(self):
        return {"model": self.model.to_dict(), "train": asdict(self.train)}
