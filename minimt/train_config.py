"""TrainConfig: the hyper-parameters and layout of a training run, checked when built, so a bad
value is refused with what to change before any step runs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import cached_property

import torch

from .checks import check_number
from .lr_schedule import lr_at
from .parallel.pipeline import PIPELINE_SCHEDULES

AUTOCAST_DTYPES = {None: None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainConfig:
    """Hyper-parameters of a run. Defaults are nanoGPT's shakespeare_char CPU recipe."""

    max_iters: int = 2000                # optimizer steps
    batch_size: int = 12                 # sequences per micro-batch
    block_size: int | None = None        # tokens per sequence; None = the model's block_size
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-3          # peak learning rate
    min_lr: float = 1e-4                 # learning rate at the end of the cosine decay
    warmup_iters: int = 100
    lr_decay_iters: int | None = None    # None = max_iters
    decay_lr: bool = True                # False: constant learning_rate
    weight_decay: float = 0.1            # applied to >= 2-D weights only (matmuls, embeddings)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0               # max global gradient norm; 0 = no clipping
    eval_interval: int = 250             # evaluate every this many steps (and at the end)
    eval_iters: int = 20                 # batches per split in one evaluation
    log_interval: int = 10               # steps between progress-bar updates
    seed: int = 1337                     # seeds the batch sampler
    autocast_dtype: str | None = None    # None (fp32), "bfloat16" or "float16": torch.autocast
    fused_adamw: bool = True             # one fused AdamW kernel (CPU and CUDA)
    progress: bool = True                # show a tqdm progress bar (rank 0 only)
    device: str = "cpu"                  # serial runs; a ParallelContext brings its own device
    # layout (used with a ParallelContext; batch_size above is then the global batch)
    schedule: str = "1f1b"               # pipeline schedule when pp > 1: see minimt.parallel.pipeline
    num_microbatches: int | None = None  # pipeline micro-batches per micro-step; None = 2 * pp
    num_chunks: int = 1                  # model chunks per pipeline rank ("interleaved" only)
    zero: int = 0                        # ZeRO stage over dp: 1 optimizer state, 2 + gradients,
                                         # 3 + weights (FSDP); True means 1
    dtype: str | None = None             # None (fp32 weights) or 16-bit weights with fp32 masters
    # Megatron's --rampup-batch-size START INCR SAMPLES: the global batch grows from START to
    # batch_size * gradient_accumulation_steps (more micro-steps); the lr is then counted in samples
    rampup_batch_size: tuple[int, int, int] | None = None

    def __post_init__(self):
        if isinstance(self.autocast_dtype, torch.dtype):  # accept torch.bfloat16 as well as "bfloat16"
            self.autocast_dtype = str(self.autocast_dtype).removeprefix("torch.")
        positive = ("max_iters", "batch_size", "gradient_accumulation_steps", "eval_interval",
                    "eval_iters", "log_interval")
        for name in positive + ("block_size", "lr_decay_iters"):
            value = getattr(self, name)
            if value is None and name in ("block_size", "lr_decay_iters"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name}={value!r} must be a positive integer")
        if isinstance(self.warmup_iters, bool) or not isinstance(self.warmup_iters, int) \
                or self.warmup_iters < 0:
            raise ValueError(f"TrainConfig.warmup_iters={self.warmup_iters!r} must be an integer >= 0")
        for name in ("learning_rate", "min_lr", "beta1", "beta2", "weight_decay", "grad_clip"):
            check_number(f"TrainConfig.{name}", getattr(self, name))
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate={self.learning_rate!r} must be positive")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ValueError(f"TrainConfig.min_lr={self.min_lr!r} must be in [0, learning_rate="
                             f"{self.learning_rate}]")
        if self.decay_lr and self.warmup_iters > self.decay_iters:
            raise ValueError(f"warmup_iters={self.warmup_iters} is longer than the decay "
                             f"(lr_decay_iters={self.decay_iters}); shorten the warm-up or set "
                             f"lr_decay_iters >= warmup_iters")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} must be in [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} and grad_clip={self.grad_clip!r} "
                             f"must be >= 0 (grad_clip=0 turns clipping off)")
        if self.autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype={self.autocast_dtype!r}: choose one of "
                             f"{list(AUTOCAST_DTYPES)} (None = full fp32)")
        self._check_layout_fields()
        self.ramp  # a bad --rampup-batch-size is refused here, with what to change

    def _check_layout_fields(self):
        if self.zero not in (0, 1, 2, 3):
            raise ValueError(f"TrainConfig.zero={self.zero!r}: choose a ZeRO stage 0, 1, 2 or 3")
        if self.schedule not in PIPELINE_SCHEDULES:
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}: choose one of "
                             f"{PIPELINE_SCHEDULES}")
        if self.dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"TrainConfig.dtype={self.dtype!r}: choose one of "
                             f"{list(AUTOCAST_DTYPES)} (None = fp32 weights)")
        if self.dtype is not None and self.autocast_dtype is not None:
            raise ValueError("set dtype (16-bit weights) or autocast_dtype (fp32 weights, 16-bit "
                             "matmuls), not both")

    @property
    def decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    @cached_property
    def ramp(self):
        """The run's RampedBatches (minimt.recipe), or None without --rampup-batch-size."""
        if self.rampup_batch_size is None:
            return None
        from .recipe import RampedBatches
        return RampedBatches(tuple(self.rampup_batch_size), self.batch_size,
                             self.batch_size * self.gradient_accumulation_steps)

    def lr(self, it: int) -> float:
        """The learning rate of step `it` under this config."""
        if not self.decay_lr:
            return self.learning_rate
        if self.rampup_batch_size is not None:
            return self.ramp.lr(it, self.learning_rate, self.min_lr, self.warmup_iters,
                                self.decay_iters)
        return lr_at(it, self.learning_rate, self.warmup_iters, self.decay_iters, self.min_lr)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TrainConfig":
        """A published run's optimizer, batch ramp and schedule (minimt.recipe.TRAIN_PRESETS,
        e.g. "mt-nlg-530b", the same name as its GPTConfig preset), with `overrides` on top."""
        from .recipe import TRAIN_PRESETS
        if name not in TRAIN_PRESETS:
            raise ValueError(f"no training preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
        return cls(**{**TRAIN_PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def check_device(device: str) -> None:
    """A device this machine has: say so, and what to use instead, before any tensor moves."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"TrainConfig.device={device!r} is not a torch device; use 'cpu', 'cuda' "
                         f"or 'cuda:0'") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device={device!r} but this machine has no usable CUDA GPU "
                         f"(torch.cuda.is_available() is False); use device='cpu'")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"TrainConfig.device={device!r} but Apple's MPS is not available here; "
                         f"use device='cpu'")
