"""The exercise mechanism: compare a learner's result with the reference and say what differs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch


class ExerciseError(AssertionError):
    """Raised when a learner's function disagrees with the reference; the message explains how."""


def compare(name: str, got, expected, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Compare one result with the reference and raise an ExerciseError that names the problem."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise ExerciseError(f"{name}: expected a torch.Tensor, got {type(got).__name__}")
        if got.shape != expected.shape:
            raise ExerciseError(f"{name}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
        if got.dtype == torch.bool or expected.dtype == torch.bool:
            if not torch.equal(got.bool(), expected.bool()):
                wrong = (got.bool() != expected.bool()).nonzero()[0].tolist()
                raise ExerciseError(f"{name}: wrong value at index {wrong}")
            return
        if not torch.allclose(got.to(expected.dtype), expected, atol=atol, rtol=rtol):
            diff = (got.to(expected.dtype) - expected).abs()
            where = tuple(torch.nonzero(diff == diff.max())[0].tolist())
            raise ExerciseError(
                f"{name}: values differ; largest error {diff.max().item():.3g} at index {where} "
                f"(got {got.flatten()[diff.argmax()].item():.6g}, "
                f"expected {expected.flatten()[diff.argmax()].item():.6g})")
        return
    if isinstance(expected, float):
        if not isinstance(got, (int, float)) or abs(got - expected) > atol + rtol * abs(expected):
            raise ExerciseError(f"{name}: got {got!r}, expected {expected!r}")
        return
    if got != expected:
        raise ExerciseError(f"{name}: got {got!r}, expected {expected!r}")


def call(exercise: str, fn: Callable, *args):
    """fn(*args); a learner's unfinished stub (NotImplementedError) becomes a clear ExerciseError."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise ExerciseError(f"{exercise}: not implemented yet (the stub still raises)") from None


def run_cases(exercise: str, fn: Callable, reference: Callable, cases: Iterable[tuple],
              hint: Callable | None = None, **tolerances) -> None:
    """Call `fn` and `reference` on every case (a tuple of arguments); print a pass line or raise.
    On a mismatch, `hint(got, *args)` may add a sentence naming the likely bug."""
    cases = list(cases)
    for i, args in enumerate(cases):
        got = call(exercise, fn, *args)
        try:
            compare(f"{exercise}, case {i + 1} of {len(cases)}", got, reference(*args), **tolerances)
        except ExerciseError as err:
            advice = hint(got, *args) if hint and isinstance(got, torch.Tensor) else None
            raise ExerciseError(f"{err}. Hint: {advice}" if advice else str(err)) from None
    print(f"{exercise}: all {len(cases)} cases pass")


def matches(got, expected) -> bool:
    """True when `got` is a tensor equal to `expected` (e.g. a known wrong answer) to 1e-6."""
    return (isinstance(got, torch.Tensor) and got.shape == expected.shape
            and torch.allclose(got.to(expected.dtype), expected, atol=1e-6, rtol=1e-5))


@dataclass(frozen=True)
class Task:
    """A piece of the package the learner writes: the body of `target` between
    `### BEGIN SOLUTION` / `### END SOLUTION`, checked by `check()` against an independent oracle."""
    id: str                   # "03.2": notebook 03, task 2
    points: int
    statement: str            # one line: what the learner writes, e.g. "write RowParallelLinear.forward"
    target: str               # "minimt.parallel.tensor:RowParallelLinear.forward": holds the region
    section: str              # where it is taught, e.g. "notebook 03, section 4"
    check: Callable[[], None]  # imports the target itself; raises ExerciseError naming case and fix
