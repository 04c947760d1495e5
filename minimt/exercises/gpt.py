"""Checkers for 02_gpt: the parameter count, the learning-rate schedule, the language-model loss."""
from __future__ import annotations

from typing import Callable

import torch

from .core import ExerciseError, call, compare, matches, run_cases


def check_param_count(fn: Callable) -> None:
    """fn(config: GPTConfig) -> int: the number of parameters of GPT(config), in closed form."""
    from ..config import PRESETS, GPTConfig
    from ..model import param_count

    configs = [GPTConfig(), GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=64),
               GPTConfig(n_layer=3, n_embd=96, n_head=3, bias=True), GPTConfig(mlp_ratio=2),
               PRESETS["gpt2-124m"], PRESETS["mt-nlg-530b"]]
    for i, config in enumerate(configs):
        got = call("check_param_count", fn, config)
        expected = param_count(config)
        if got != expected:
            C, V = config.n_embd, config.vocab_size
            diff = expected - got if isinstance(got, int) else None
            hint = ("count the tied token embedding / output layer V*C once, not twice"
                    if diff == -V * C else
                    "did you forget the position embedding (block_size * C)?"
                    if diff == config.block_size * C else
                    "with bias=True every Linear and LayerNorm has a bias vector too"
                    if config.bias else "per block: 4C^2 (attention) + 2*mlp_ratio*C^2 (MLP) + 2C "
                    "(two LayerNorm gains); plus the final LayerNorm's C")
            raise ExerciseError(f"check_param_count, case {i + 1} of {len(configs)} ({config}): "
                                f"got {got!r}, expected {expected:,}; {hint}")
    print(f"check_param_count: all {len(configs)} cases pass")


def check_lr_schedule(fn: Callable) -> None:
    """fn(it, learning_rate, warmup_iters, lr_decay_iters, min_lr) -> float: linear warm-up then
    cosine decay (nanoGPT's get_lr, minimt.train.lr_at)."""
    from ..train import lr_at

    settings = [(1e-3, 100, 2000, 1e-4), (6e-4, 10, 50, 0.0), (1.0, 0, 10, 0.5)]
    cases = [(it, *s) for s in settings for it in (0, 1, s[1] - 1, s[1], (s[1] + s[2]) // 2,
                                                   s[2] - 1, s[2], s[2] + 5) if it >= 0]
    run_cases("check_lr_schedule", fn, lr_at, cases, atol=1e-12, rtol=1e-6)


def _lm_loss(logits, idx):
    """Reference: position t predicts token t+1, so drop the last logit and the first token."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())


def check_lm_loss(fn: Callable) -> None:
    """fn(logits (B, T, V), idx (B, T)) -> scalar mean cross entropy of predicting idx[:, t+1]
    from logits[:, t] (the causal language-modelling loss)."""
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(2, 5, 7, generator=g), torch.randint(7, (2, 5), generator=g)),
             (torch.randn(1, 2, 3, generator=g), torch.randint(3, (1, 2), generator=g)),
             (torch.randn(3, 8, 11, generator=g), torch.randint(11, (3, 8), generator=g))]
    for i, (logits, idx) in enumerate(cases):
        got = call("check_lm_loss", fn, logits, idx)
        expected = _lm_loss(logits, idx)
        try:
            compare(f"check_lm_loss, case {i + 1} of {len(cases)}", got, expected)
        except ExerciseError as err:
            unshifted = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())
            wrong_way = torch.nn.functional.cross_entropy(logits[:, 1:].flatten(0, 1),
                                                          idx[:, :-1].flatten())
            hint = ("this is the loss without the shift: logits[:, t] must predict idx[:, t+1]"
                    if matches(got, unshifted) else
                    "shifted the wrong way: use logits[:, :-1] against idx[:, 1:]"
                    if matches(got, wrong_way) else None)
            raise ExerciseError(f"{err}. Hint: {hint}" if hint else str(err)) from None
    print(f"check_lm_loss: all {len(cases)} cases pass")
