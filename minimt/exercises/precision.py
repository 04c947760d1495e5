"""Checkers for 05_mixed_precision: the smallest loss scale, the dynamic scaler's update,
pruning to half."""
from __future__ import annotations

from typing import Callable

import torch

from .core import ExerciseError, call, compare


def check_smallest_loss_scale(fn: Callable) -> None:
    """fn(grads: Tensor) -> float: the smallest power of two S for which no nonzero gradient
    becomes 0 when `grads * S` is cast to fp16 (minimt.formats.smallest_loss_scale)."""
    from ..formats import cast, smallest_loss_scale

    g = torch.Generator().manual_seed(0)
    cases = [(torch.tensor([1e-3, 2.0 ** -30]),), (torch.tensor([2.0 ** -25]),),
             (torch.tensor([3e-9, -1e-2, 0.0]),), (torch.tensor([0.5, 1e-4]),),
             (torch.randn(1000, generator=g) * 1e-6,)]
    for i, (grads,) in enumerate(cases):
        got = call("check_smallest_loss_scale", fn, grads)
        expected = smallest_loss_scale(grads)
        if got != expected:
            nonzero = grads[grads != 0]
            lost = (cast(nonzero * float(got), "fp16") == 0).sum().item() if isinstance(got, (int, float)) else None
            hint = (f"with S={got!r}, {lost} gradient(s) still flush to zero: S is too small"
                    if lost else "a smaller power of two also works: look for the smallest"
                    if lost == 0 else "return a float power of two")
            raise ExerciseError(f"check_smallest_loss_scale, case {i + 1} of {len(cases)}: got "
                                f"{got!r}, expected {expected!r}; {hint}. Remember: exactly half of "
                                f"2^-24 rounds to even, i.e. to 0")
    print(f"check_smallest_loss_scale: all {len(cases)} cases pass")


def check_scaler_update(fn: Callable) -> None:
    """fn(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval) ->
    (new_scale, new_growth_tracker): one step of the dynamic loss scaler (torch.amp.GradScaler's rule)."""
    from ..precision import DynamicLossScaler

    def reference(scale, tracker, found_inf, growth, backoff, interval):
        s = DynamicLossScaler(scale, growth, backoff, interval)
        s.growth_tracker = tracker
        s.update(found_inf)
        return s.scale, s.growth_tracker

    cases = [(65536.0, 0, True, 2.0, 0.5, 2000), (65536.0, 5, True, 2.0, 0.5, 2000),
             (65536.0, 0, False, 2.0, 0.5, 2000), (65536.0, 1998, False, 2.0, 0.5, 2000),
             (65536.0, 1999, False, 2.0, 0.5, 2000), (8.0, 2, False, 4.0, 0.25, 3),
             (8.0, 2, True, 4.0, 0.25, 3), (1.0, 0, False, 2.0, 0.5, 1)]
    for i, args in enumerate(cases):
        got = call("check_scaler_update", fn, *args)
        expected = reference(*args)
        if not isinstance(got, tuple) or tuple(got) != expected:
            scale, tracker, found_inf = args[:3]
            hint = ("on overflow: scale * backoff_factor and the tracker back to 0" if found_inf else
                    "grow only when the tracker reaches growth_interval, then reset it to 0"
                    if tracker + 1 == args[5] else "a finite step only counts: tracker + 1")
            raise ExerciseError(f"check_scaler_update, case {i + 1} of {len(cases)} "
                                f"(scale={scale}, tracker={tracker}, found_inf={found_inf}, "
                                f"interval={args[5]}): got {got!r}, expected {expected!r}; {hint}")
    print(f"check_scaler_update: all {len(cases)} cases pass")


def check_prune_half(fn: Callable) -> None:
    """fn(weight: Tensor) -> bool mask of the same shape keeping the 50% of entries with the
    largest |w| (magnitude pruning of one matrix to 50%)."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.tensor([[0.3, -2.0], [0.1, -0.05]]), torch.randn(8, 6, generator=g),
               torch.randn(32, 16, generator=g) * 0.02]

    def reference(w):
        keep = torch.zeros(w.numel(), dtype=torch.bool)
        keep[w.abs().flatten().argsort(descending=True)[:w.numel() // 2]] = True
        return keep.view_as(w)

    for i, w in enumerate(weights):
        got = call("check_prune_half", fn, w.clone())
        if isinstance(got, torch.Tensor) and got.shape == w.shape and got.dtype == torch.bool:
            if got.sum().item() != w.numel() // 2:
                raise ExerciseError(f"check_prune_half, case {i + 1}: the mask keeps "
                                    f"{got.sum().item()} of {w.numel()} entries, expected half")
            kept, dropped = w.abs()[got], w.abs()[~got]
            if kept.min() < dropped.max():
                raise ExerciseError(f"check_prune_half, case {i + 1}: kept |w|={kept.min():.3g} "
                                    f"but dropped the larger |w|={dropped.max():.3g}: rank by "
                                    "absolute value (a large negative weight matters too)")
        compare(f"check_prune_half, case {i + 1} of {len(weights)}", got, reference(w))
    print(f"check_prune_half: all {len(weights)} cases pass")
