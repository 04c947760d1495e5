"""The exercise mechanism: compare a learner's result with the reference and say what differs."""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import torch


class ExerciseError(AssertionError):
    """Raised when a learner's function disagrees with the reference; the message explains how."""

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: the message is the whole feedback."""
        return [f"ExerciseError: {self}"]


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
        bad = ~torch.isfinite(got.to(expected.dtype)) & torch.isfinite(expected)
        if bad.any():  # NaN/inf first: max() and allclose say little about them
            where = tuple(bad.nonzero()[0].tolist())
            raise ExerciseError(f"{name}: {int(bad.sum())} values are {got[where].item()} where the "
                                f"reference is finite, first at index {where} (expected "
                                f"{expected[where].item():.6g})")
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

    def __post_init__(self) -> None:
        """The check refuses to run where nbgrader would grade the instructor's package."""
        import functools
        check = self.check

        @functools.wraps(check)
        def refusing() -> None:
            from ..course.repo import refuse_graded_package
            refuse_graded_package(f"task {self.id}")
            check()
        object.__setattr__(self, "check", refusing)


STUB_TASK = re.compile(r"task (\d+\.\d+)")


def learner(target: str):
    """The object `target` ("module:Qualname.attr") names, imported now: the learner's current code."""
    module, _, qualname = target.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def unfinished(task_id: str, statement: str, target: str, section: str, message: str) -> ExerciseError:
    """The ExerciseError for a stub that still raises NotImplementedError(message)."""
    found = STUB_TASK.search(message)
    path = target.partition(":")[0].replace(".", "/") + ".py"
    if found and found.group(1) != task_id:
        return ExerciseError(f"task {task_id} needs task {found.group(1)} first: {message}")
    return ExerciseError(f"task {task_id} not written yet: {statement} in {path} (between "
                         f"### BEGIN SOLUTION and ### END SOLUTION); see {section}")


def rank_stub_message(err: Exception) -> str | None:
    """The message of a stub's NotImplementedError that a rank raised (quoted in the error `launch`
    raises), or None when `err` comes from something else."""
    text = f"{err}\n{getattr(err, 'traceback', '')}"
    lines = [line for line in text.splitlines() if "NotImplementedError" in line]
    return lines[-1].split("NotImplementedError:", 1)[-1].strip() if lines else None


def task(id: str, points: int, statement: str, target: str, section: str,
         check: Callable[[], None]) -> Task:
    """A Task whose check turns a stub's NotImplementedError, raised here or on a rank, into an
    ExerciseError that says what to write and where."""
    def guarded() -> None:
        try:
            check()
        except NotImplementedError as err:
            raise unfinished(id, statement, target, section, str(err)) from None
        except Exception as err:  # a rank's stub arrives as a RankError quoting its traceback
            message = None if isinstance(err, ExerciseError) else rank_stub_message(err)
            if message is None:
                raise
            raise unfinished(id, statement, target, section, message) from None
    guarded.__doc__ = check.__doc__
    return Task(id, points, statement, target, section, guarded)


def shape_first(name: str, got, expected_shape: tuple, hint: str = "") -> None:
    """Name a wrong type or shape before any arithmetic is tried on it."""
    if not isinstance(got, torch.Tensor):
        raise ExerciseError(f"{name}: expected a torch.Tensor of shape {expected_shape}, got "
                            f"{type(got).__name__}")
    if tuple(got.shape) != tuple(expected_shape):
        raise ExerciseError(f"{name}: shape {tuple(got.shape)}, expected {tuple(expected_shape)}"
                            + (f". Hint: {hint}" if hint else ""))


def needs_tasks(check: Callable) -> Callable:
    """Wrap a notebook exercise's checker whose oracle runs package code the learner writes in a
    task: an unwritten task gives "needs task X first", not a NotImplementedError from inside."""
    import functools

    @functools.wraps(check)
    def wrapped(*args, **kwargs):
        try:
            return check(*args, **kwargs)
        except Exception as err:
            found = STUB_TASK.search(str(err))
            if isinstance(err, ExerciseError) or not found or "NotImplementedError" not in (
                    type(err).__name__ + str(err)):
                raise
            raise ExerciseError(f"{check.__name__} needs task {found.group(1)} first: write it, "
                                f"then check it with minimt.course.check({found.group(1)!r})") from None
    return wrapped
