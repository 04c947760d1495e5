"""MT-NLG's schedules, counted in samples (Smith et al. 2022, arXiv 2201.11990, section 4): the
global batch ramps from 32 to 1920 over the first 12B tokens (by 32: secondary notes), the learning
rate warms up over 1B tokens and decays by a cosine to a tenth (secondary notes, corroborated by
Zhao et al.'s survey table, arXiv 2303.18223). Megatron counts both in consumed samples
(--rampup-batch-size START INCR SAMPLES, --lr-warmup-samples, --lr-decay-samples): a schedule counted
in iterations would stretch wherever the batch is small."""
from __future__ import annotations

import math
from dataclasses import dataclass


def rampup_global_batch_size(consumed_samples: int, start: int, increment: int,
                             rampup_samples: int, global_batch_size: int) -> int:
    """The global batch of the next step after `consumed_samples` samples: start, then one more
    `increment` each time another rampup_samples / num_increments samples are consumed (Megatron's
    float arithmetic: steps = int(consumed / (rampup_samples / num_increments)), num_increments =
    (global_batch_size - start) / increment); global_batch_size once consumed > rampup_samples."""
    if start < 1 or increment < 1 or rampup_samples < 0 or global_batch_size < start \
            or (global_batch_size - start) % increment:
        raise ValueError(f"--rampup-batch-size {start} {increment} {rampup_samples} with global "
                         f"batch {global_batch_size}: START and INCR must be >= 1, SAMPLES >= 0, "
                         "and the global batch must be START plus a whole number of INCR")
    ### BEGIN SOLUTION
    num_increments = (global_batch_size - start) // increment
    if consumed_samples > rampup_samples or num_increments == 0:
        return global_batch_size
    steps = int(consumed_samples / (rampup_samples / num_increments))
    return start + steps * increment
    ### END SOLUTION


def num_microbatches(global_batch: int, micro_batch_size: int, data_parallel_size: int) -> int:
    """Micro-batches per step on each data-parallel replica: global / (micro * dp), which must be
    whole (Megatron asserts it at every size of the ramp)."""
    per_step = micro_batch_size * data_parallel_size
    if global_batch % per_step:
        raise ValueError(f"global batch {global_batch} is not a multiple of micro-batch "
                         f"{micro_batch_size} x data-parallel {data_parallel_size} = {per_step}; "
                         "choose ramp sizes (START, INCR, final) that are")
    return global_batch // per_step


def lr_at_sample(consumed_samples: int, max_lr: float, min_lr: float, warmup_samples: int,
                 decay_samples: int, init_lr: float = 0.0) -> float:
    """Megatron's OptimizerParamScheduler with lr_decay_style="cosine", counted in samples: linear
    from init_lr to max_lr over warmup_samples, then a half cosine to min_lr at decay_samples
    (measured from the start of training, warm-up included), min_lr after."""
    if warmup_samples > 0 and consumed_samples <= warmup_samples:
        return init_lr + (max_lr - init_lr) * consumed_samples / warmup_samples
    if consumed_samples > decay_samples:
        return min_lr
    ratio = (consumed_samples - warmup_samples) / (decay_samples - warmup_samples)
    return min_lr + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (max_lr - min_lr)


@dataclass(frozen=True)
class Ramp:
    """A --rampup-batch-size START INCR SAMPLES towards a final global batch."""
    start: int
    increment: int
    samples: int
    global_batch_size: int

    def batch_at(self, consumed_samples: int) -> int:
        return rampup_global_batch_size(consumed_samples, self.start, self.increment,
                                        self.samples, self.global_batch_size)

    def steps(self, total_samples: int) -> list[int]:
        """The global batch of every step until `total_samples` samples are consumed."""
        sizes, consumed = [], 0
        while consumed < total_samples:
            sizes.append(self.batch_at(consumed))
            consumed += sizes[-1]
        return sizes

    def count(self, total_samples: int) -> tuple[int, int]:
        """(steps to reach the final global batch, steps to consume total_samples), counted
        without listing every step: during the ramp each batch size lasts a few hundred steps."""
        ramp_steps, consumed = 0, 0
        while consumed <= self.samples and self.batch_at(consumed) < self.global_batch_size:
            consumed += self.batch_at(consumed)
            ramp_steps += 1
        rest = max(0, total_samples - consumed)
        return ramp_steps, ramp_steps + -(-rest // self.global_batch_size)


# MT-NLG 530B's recipe (sequence length 2048 tokens): 270B tokens and the ramp 32 -> 1920 over 12B
# tokens from section 4 of the paper; the ramp's step of 32 and the lr schedule from secondary notes.
MT_NLG_SEQ_LENGTH = 2048
MT_NLG_RAMP = Ramp(start=32, increment=32, samples=12_000_000_000 // 2048, global_batch_size=1920)
MT_NLG_TOKENS = 270_000_000_000  # trained on 270B tokens
MT_NLG_LR = dict(max_lr=5.0e-5, min_lr=5.0e-6, warmup_samples=1_000_000_000 // 2048,
                 decay_samples=340_000_000_000 // 2048)

# MT-NLG's 15 datasets and their weights (the paper's Table 2, as fractions; in this order in
# Microsoft's Megatron-DeepSpeed example scripts, DATA_BLEND under USE_INTERNAL_DATA).
MT_NLG_BLEND = {"Books3": 0.14336, "RealNews": 0.08962, "OpenWebText2": 0.19336,
                "StackExchange": 0.05689, "CC-Stories": 0.00859, "PubMed Abstracts": 0.02897,
                "Wikipedia": 0.04771, "Gutenberg (PG-19)": 0.00873, "BookCorpus2": 0.01007,
                "NIH ExPorter": 0.00208, "CC-2020-50": 0.13017, "Pile-CC": 0.09446,
                "CC-2021-04": 0.15652, "ArXiv": 0.01359, "GitHub": 0.01588}


class RampedBatches:
    """A training run's global batch per step under --rampup-batch-size START INCR SAMPLES, in a
    Trainer whose micro-step draws `micro_batch` sequences (over all replicas): each step runs
    global / micro_batch micro-steps. The learning rate is then counted in samples, as Megatron
    does: warm-up and decay steps of the final global batch become samples."""

    def __init__(self, rampup: tuple[int, int, int], micro_batch: int, final_global: int):
        start, increment, samples = rampup
        for name, size in (("START", start), ("INCR", increment), ("final global batch",
                                                                    final_global)):
            if size % micro_batch:
                raise ValueError(f"--rampup-batch-size {start} {increment} {samples}: {name} "
                                 f"{size} is not a multiple of the micro-step batch {micro_batch}; "
                                 "every size of the ramp must be a whole number of micro-steps")
        self.ramp = Ramp(start, increment, samples, final_global)
        rampup_global_batch_size(0, start, increment, samples, final_global)  # validates
        self.micro_batch = micro_batch
        self._consumed = [0]  # samples consumed before step i, grown on demand

    def consumed(self, step: int) -> int:
        while len(self._consumed) <= step:
            self._consumed.append(self._consumed[-1] + self.ramp.batch_at(self._consumed[-1]))
        return self._consumed[step]

    def global_batch(self, step: int) -> int:
        return self.ramp.batch_at(self.consumed(step))

    def micro_steps(self, step: int) -> int:
        return self.global_batch(step) // self.micro_batch

    def lr(self, step: int, max_lr: float, min_lr: float, warmup_iters: int,
           decay_iters: int) -> float:
        final = self.ramp.global_batch_size
        return lr_at_sample(self.consumed(step), max_lr, min_lr, warmup_iters * final,
                            decay_iters * final)


# MT-NLG's optimizer (section 4 of the paper, per secondary reading notes; the same values appear
# in Microsoft's Megatron-DeepSpeed MT-NLG-style scripts and in Zhao et al.'s survey table, arXiv
# 2303.18223): Adam, gradient clipping, weight decay. eps 1e-8 is torch's AdamW default.
MT_NLG_OPTIMIZER = dict(beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0, weight_decay=0.1)

# TrainConfig.from_preset(name): a published run's settings. MT-NLG's warm-up (1B tokens) and decay
# (340B tokens) become whole steps of the final batch of 1920 x 2048 tokens (254 and 86,466: 0.1%
# short); the exact schedule in samples is MT_NLG_LR (lr_at_sample).
TRAIN_PRESETS = {"mt-nlg-530b": dict(
    learning_rate=MT_NLG_LR["max_lr"], min_lr=MT_NLG_LR["min_lr"],
    **{k: v for k, v in MT_NLG_OPTIMIZER.items() if k != "eps"},
    batch_size=MT_NLG_RAMP.start,
    gradient_accumulation_steps=MT_NLG_RAMP.global_batch_size // MT_NLG_RAMP.start,
    rampup_batch_size=(MT_NLG_RAMP.start, MT_NLG_RAMP.increment, MT_NLG_RAMP.samples),
    max_iters=80_087, warmup_iters=MT_NLG_LR["warmup_samples"] // MT_NLG_RAMP.global_batch_size,
    lr_decay_iters=MT_NLG_LR["decay_samples"] // MT_NLG_RAMP.global_batch_size)}
