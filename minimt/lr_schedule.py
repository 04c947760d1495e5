"""The learning-rate schedule of a run: linear warm-up, then cosine decay (nanoGPT's get_lr)."""
from __future__ import annotations

import math


def lr_at(it: int, learning_rate: float, warmup_iters: int, lr_decay_iters: int,
          min_lr: float) -> float:
    """Learning rate of step `it`: linear warm-up, then cosine decay to `min_lr` (nanoGPT's get_lr).

    lr = learning_rate * (it + 1) / (warmup_iters + 1)            for it < warmup_iters
    lr = min_lr + (learning_rate - min_lr) * (1 + cos(pi * r)) / 2, r = (it - warmup) / (decay - warmup)
    lr = min_lr                                                     for it > lr_decay_iters
    (cosine schedule: Loshchilov & Hutter 2017, arXiv 1608.03983)
    """
    ### BEGIN SOLUTION
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)
    ### END SOLUTION
