"""The types pipeline schedules share: Action, the errors a schedule that cannot run raises, and
Timeline (every action's start and end). pipeline.py (naive, GPipe, 1F1B, interleaved) and
zero_bubble.py (ZB-H1, ZB-V) both build on them; pipeline_schedule reaches zero_bubble.py for the
zero-bubble kinds, so these live apart from both and neither module imports the other back.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Action:
    """One step of a rank: op "F" or "B" on one micro-batch of one model chunk."""

    op: str
    microbatch: int
    chunk: int = 0

    def __repr__(self) -> str:
        return f"{self.op}{self.microbatch}" + (f".{self.chunk}" if self.chunk else "")


class ScheduleError(ValueError):
    """A schedule that cannot run: missing or repeated actions, B before F, unmatched messages."""


class ScheduleDeadlockError(ScheduleError):
    """Every unfinished rank waits for a message that no rank will ever send."""


def _check_sizes(num_stages, num_microbatches, num_chunks):
    for name, value in (("num_stages", num_stages), ("num_microbatches", num_microbatches),
                        ("num_chunks", num_chunks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


@dataclass
class Timeline:
    """Start and end time of every action on every rank (simulated or measured)."""

    events: list[list[tuple[Action, float, float]]]  # per rank: (action, start, end)
    start: float = 0.0                                 # common time origin

    @property
    def makespan(self) -> float:
        """Wall time from the start to the last action's end."""
        return max(e for rank in self.events for _, _, e in rank) - self.start

    def busy(self, rank: int) -> float:
        """Time a rank spent inside its actions."""
        return sum(e - s for _, s, e in self.events[rank])

    def idle_fraction(self, rank: int | None = None) -> float:
        """Idle time / wall time of one rank, or over all ranks (the pipeline bubble fraction)."""
        ranks = range(len(self.events)) if rank is None else [rank]
        return 1.0 - sum(self.busy(r) for r in ranks) / (len(ranks) * self.makespan)
