"""Checkers for 04_pipeline_parallel: 1F1B warm-up counts, the GPipe schedule, bubble prediction."""
from __future__ import annotations

from typing import Callable

from .core import ExerciseError, call, compare, run_cases


def check_warmup_count(fn: Callable) -> None:
    """fn(num_stages, rank, num_microbatches) -> int: forwards a rank runs before its first
    backward in 1F1B (Megatron-LM's num_warmup_microbatches)."""
    from ..parallel.pipeline import num_warmup_microbatches

    cases = [(4, 0, 8), (4, 3, 8), (4, 1, 8), (2, 0, 1), (4, 0, 2), (8, 2, 16)]
    for i, (p, rank, m) in enumerate(cases):
        got = call("check_warmup_count", fn, p, rank, m)
        expected = num_warmup_microbatches("1f1b", p, rank, m)
        if got != expected:
            hint = ("the last stage starts its backward right after its first forward"
                    if rank == p - 1 else
                    "a rank can never warm up with more micro-batches than there are (cap at m)"
                    if expected == m else "rank r waits for the p - r - 1 stages after it to fill")
            raise ExerciseError(f"check_warmup_count, case {i + 1} of {len(cases)} (p={p}, "
                                f"rank={rank}, m={m}): got {got!r}, expected {expected}; {hint}")
    print(f"check_warmup_count: all {len(cases)} cases pass")


def check_gpipe_schedule(fn: Callable) -> None:
    """fn(num_stages, num_microbatches) -> per rank, a list of Actions (or (op, microbatch) pairs):
    every forward, then every backward (GPipe)."""
    from ..parallel.pipeline import Action, pipeline_schedule, validate_schedule

    def as_actions(schedule):
        return [[a if isinstance(a, Action) else Action(*a) for a in rank] for rank in schedule]

    cases = [(2, 1), (2, 4), (4, 8), (3, 5)]
    for i, (p, m) in enumerate(cases):
        name = f"check_gpipe_schedule, case {i + 1} of {len(cases)} (p={p}, m={m})"
        got = as_actions(call("check_gpipe_schedule", fn, p, m))
        if len(got) != p:
            raise ExerciseError(f"{name}: {len(got)} ranks, expected one list per stage ({p})")
        try:
            validate_schedule(got)
        except ValueError as err:
            raise ExerciseError(f"{name}: not a valid schedule: {err}") from None
        compare(name, [[repr(a) for a in rank] for rank in got],
                [[repr(a) for a in rank] for rank in pipeline_schedule("gpipe", p, m)])
    print(f"check_gpipe_schedule: all {len(cases)} cases pass")


def check_bubble_prediction(fn: Callable) -> None:
    """fn(kind, num_stages, num_microbatches, num_chunks) -> predicted idle fraction, checked
    against the event simulator's timeline (F = 1, B = 2 time units per stage)."""
    from ..parallel.pipeline import pipeline_schedule, simulate

    def simulated(kind, p, m, v):
        return simulate(pipeline_schedule(kind, p, m, v)).idle_fraction()

    cases = [("gpipe", 4, 8, 1), ("1f1b", 2, 1, 1), ("1f1b", 4, 4, 1), ("naive", 4, 8, 1),
             ("interleaved", 4, 8, 2), ("interleaved", 2, 4, 3)]
    run_cases("check_bubble_prediction", fn, simulated, cases, atol=1e-9, rtol=0)
