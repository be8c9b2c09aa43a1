"""Training options: one frozen dataclass beside ModelConfig, and the pair as one Config.

Every key here and in ModelConfig can be set in a config file or as --key=value.
"""
from dataclasses import asdict, dataclass

from model_config import ConfigError, ModelConfig

DATA_LOADERS = ("random", "sequential")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TrainConfig:
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
    # evaluation and logging
    eval_interval: int = 250
    eval_iters: int = 200
    log_interval: int = 10
    out_dir: str = "runs"
    run_name: str | None = None  # None: <arch_preset>-<date>-<time>
    use_tensorboard: bool = True
    peak_tflops: float | None = None  # dense peak of one device for the dtype; None: look it up
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
        if self.data_loader not in DATA_LOADERS:
            raise ConfigError(f"data_loader={self.data_loader!r} is not accepted. "
                              f"Accepted values: {', '.join(DATA_LOADERS)}.")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} is not accepted. Accepted values: {', '.join(DTYPES)}.")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ConfigError(f"min_lr={self.min_lr!r} must lie between 0 and learning_rate={self.learning_rate!r}.")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip={self.grad_clip!r} is invalid: use a positive norm, or 0 to disable.")


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    train: TrainConfig

    def to_dict(self):
        return {"model": self.model.to_dict(), "train": asdict(self.train)}
