"""Pipeline schedules as data: who runs which forward (F) and backward (B) in what order.

`pipeline_schedule(kind, p, m, v)` returns, for each pipeline rank, its ordered list of actions.
The same lists drive the runtime (pipeline_runtime.py), the plots (pipeline_viz.py), the event
simulator below and the tests. Kinds, as in Megatron-LM's `schedules.py`:

- "naive": no micro-batching, the whole batch is one micro-batch: F then B on every stage.
- "gpipe": all forwards, then all backwards (Huang et al. 2019, arXiv 1811.06965).
- "1f1b": p-rank-1 warm-up forwards, then one forward one backward, then the cool-down
  backwards (PipeDream-Flush; Narayanan et al. 2021, arXiv 2104.04473).
- "interleaved": 1F1B over v model chunks per rank, virtual stage = chunk * p + rank (same paper).

Communication model (the runtime's): activations go from virtual stage s to s+1 after F, gradients
from s+1 to s after B; sends never block (isend), receives do. `simulate` replays exactly that, so
a schedule that would hang the runtime raises ScheduleDeadlockError instead.
"""
from __future__ import annotations

# the shared types, re-exported here (their home is schedule_types.py, which zero_bubble.py imports)
from .schedule_types import (Action, ScheduleDeadlockError, ScheduleError,  # noqa: F401
                             Timeline, _check_sizes)

SCHEDULES = ("naive", "gpipe", "1f1b", "interleaved")
PIPELINE_SCHEDULES = SCHEDULES + ("zb-h1", "zbv")  # with the zero-bubble ones (zero_bubble.py)


def stage_owner(stage: int, num_stages: int) -> tuple[int, int]:
    """(pipeline rank, chunk) that holds virtual stage `stage` = chunk * p + rank."""
    return stage % num_stages, stage // num_stages


def message_route(op: str, stage: int, num_virtual: int) -> tuple[int | None, int | None]:
    """(stage that sends the input of `op` on `stage`, stage that receives its output).

    F takes activations from stage - 1 and sends to stage + 1; B takes the gradient from stage + 1
    and sends to stage - 1. None past either end of the pipeline (the batch, the loss).
    """
    before = stage - 1 if stage > 0 else None
    after = stage + 1 if stage + 1 < num_virtual else None
    return (before, after) if op == "F" else (after, before)


def num_warmup_microbatches(kind: str, num_stages: int, rank: int, num_microbatches: int,
                            num_chunks: int = 1) -> int:
    """Forwards a rank runs before its first backward in 1F1B (Megatron's num_warmup_microbatches).

    1F1B: p - rank - 1 (the later stages must fill up first). Interleaved: 2(p - rank - 1) +
    (v - 1) p, also when m == p (Megatron-LM since late 2024 and torch's ScheduleInterleaved1F1B;
    older Megatron ran every forward first then, holding more activations). Capped at the total.
    """
    total = num_microbatches * num_chunks
    if kind == "1f1b":
        return min(num_stages - rank - 1, total)
    if kind == "interleaved":
        return min(2 * (num_stages - rank - 1) + (num_chunks - 1) * num_stages, total)
    raise ValueError(f"warm-up is defined for '1f1b' and 'interleaved', not {kind!r}")


def _interleaved_action(op, k, num_stages, num_chunks):
    """The k-th forward (or backward) of a rank in interleaved 1F1B: groups of p micro-batches
    walk through the chunks in order (forward) or in reverse (backward), as in Megatron."""
    group, within = divmod(k, num_stages * num_chunks)
    chunk = within // num_stages
    if op == "B":
        chunk = num_chunks - 1 - chunk
    return Action(op, group * num_stages + within % num_stages, chunk)


def pipeline_schedule(kind: str, num_stages: int, num_microbatches: int,
                      num_chunks: int = 1) -> list[list[Action]]:
    """Per pipeline rank, the ordered list of Actions of one training step (see module doc);
    the zero-bubble kinds "zb-h1", "zbv" and "dualpipev" (F, B, W actions) come from
    zero_bubble.py."""
    if kind in ("zb-h1", "zbv", "dualpipev"):
        from .zero_bubble import zero_bubble_schedule
        chunks = 1 if kind == "zb-h1" else 2
        if num_chunks != chunks:
            raise ValueError(f"{kind!r} has {chunks} chunk(s) per rank, not "
                             f"num_chunks={num_chunks}")
        return zero_bubble_schedule(kind, num_stages, num_microbatches)
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule kind {kind!r}; choose one of {SCHEDULES}")
    _check_sizes(num_stages, num_microbatches, num_chunks)
    p, m, v = num_stages, num_microbatches, num_chunks
    if kind != "interleaved" and v != 1:
        raise ValueError(f"num_chunks={v} needs kind='interleaved'; {kind!r} has one chunk "
                         f"per rank")
    if kind == "naive":
        return [[Action("F", 0), Action("B", 0)] for _ in range(p)]
    if kind == "gpipe":
        return [[Action("F", i) for i in range(m)] + [Action("B", i) for i in range(m)]
                for _ in range(p)]
    if kind == "interleaved" and m % p:
        raise ValueError(f"interleaved 1F1B needs num_microbatches divisible by num_stages (as in "
                         f"Megatron-LM); got m={m}, p={p}: use m in {[p * k for k in range(1, 4)]}")
    ### BEGIN SOLUTION
    schedule = []
    for rank in range(p):
        if kind == "1f1b":
            fwd = [Action("F", i) for i in range(m)]
            bwd = [Action("B", i) for i in range(m)]
        else:
            fwd = [_interleaved_action("F", k, p, v) for k in range(m * v)]
            bwd = [_interleaved_action("B", k, p, v) for k in range(m * v)]
        warmup = num_warmup_microbatches(kind, p, rank, m, v)
        actions = fwd[:warmup]
        for k in range(len(fwd) - warmup):  # steady state: one forward, one backward
            actions += [fwd[warmup + k], bwd[k]]
        actions += bwd[len(fwd) - warmup:]  # cool-down
        schedule.append(actions)
    ### END SOLUTION
    return schedule


def schedule_shape(schedule) -> tuple[int, int, int]:
    """(num_stages p, num_microbatches m, num_chunks v) read from a schedule's actions."""
    actions = [a for rank in schedule for a in rank]
    if not actions:
        raise ScheduleError("the schedule has no actions")
    return (len(schedule), 1 + max(a.microbatch for a in actions),
            1 + max(a.chunk for a in actions))


def p2p_messages(schedule) -> tuple[list[tuple], list[tuple]]:
    """The (src, dst, op, microbatch, chunk) messages the ranks send, and those they expect.

    F on virtual stage s = chunk * p + rank sends its activation to stage s + 1; B on stage s
    sends the input gradient to stage s - 1. A message is named by the receiving action.
    """
    p, _, v = schedule_shape(schedule)
    sends, recvs = [], []
    for rank, actions in enumerate(schedule):
        for a in actions:
            source, target = message_route(a.op, a.chunk * p + rank, p * v)
            if target is not None:
                dst, chunk = stage_owner(target, p)
                sends.append((rank, dst, a.op, a.microbatch, chunk))
            if source is not None:
                recvs.append((stage_owner(source, p)[0], rank, a.op, a.microbatch, a.chunk))
    return sends, recvs


def validate_schedule(schedule) -> None:
    """Raise ScheduleError (saying which rank and action) unless the schedule can run.

    Checks: ops are "F"/"B"; every rank runs each (micro-batch, chunk) once forward and once
    backward, forward first; every send has its receive; and the blocking-receive replay
    (`simulate`) finishes, i.e. no deadlock and no rank waiting on itself.
    """
    p, m, v = schedule_shape(schedule)
    expected = {(i, c) for i in range(m) for c in range(v)}
    for rank, actions in enumerate(schedule):
        seen = {"F": set(), "B": set()}
        for a in actions:
            if a.op not in seen:
                raise ScheduleError(f"rank {rank}: op {a.op!r} in {a!r} must be 'F' or 'B'")
            key = (a.microbatch, a.chunk)
            if key in seen[a.op]:
                raise ScheduleError(f"rank {rank}: {a!r} appears twice")
            if a.op == "B" and key not in seen["F"]:
                raise ScheduleError(f"rank {rank}: {a!r} comes before its forward F{a.microbatch}"
                                    f"{'.' + str(a.chunk) if a.chunk else ''}")
            seen[a.op].add(key)
        for op in "FB":
            missing = sorted(expected - seen[op])
            if missing:
                raise ScheduleError(f"rank {rank}: no {op} for (micro-batch, chunk) {missing}; "
                                    f"every rank must run all {m} micro-batches x {v} chunks")
    sends, recvs = p2p_messages(schedule)
    if sorted(sends) != sorted(recvs):
        unmatched = sorted(set(sends) ^ set(recvs))[:3]
        raise ScheduleError(f"sends and receives do not pair up, e.g. {unmatched}")
    simulate(schedule, forward_cost=1.0, backward_cost=1.0)


def simulate(schedule, forward_cost: float = 1.0, backward_cost: float = 2.0,
             comm_cost: float = 0.0) -> Timeline:
    """Replay a schedule with blocking receives: the theoretical timeline (unit costs per stage).

    Costs are for a whole stage; an interleaved chunk holds 1/v of the stage, so its actions cost
    1/v as much. Raises ScheduleDeadlockError naming what each stuck rank waits for.
    """
    p, _, v = schedule_shape(schedule)
    cost = {"F": forward_cost / v, "B": backward_cost / v}
    done = {}  # (rank, op, microbatch, chunk) -> end time
    pointer, clock = [0] * p, [0.0] * p
    events = [[] for _ in range(p)]

    def ready_time(rank, a):
        """When a's input is available, or None if it has not been produced yet."""
        source, _ = message_route(a.op, a.chunk * p + rank, p * v)
        if source is not None:
            src, chunk = stage_owner(source, p)
            key, delay = (src, a.op, a.microbatch, chunk), comm_cost * (src != rank)
        elif a.op == "B":  # last virtual stage: the loss needs this rank's own forward
            key, delay = (rank, "F", a.microbatch, a.chunk), 0.0
        else:
            return 0.0
        return done[key] + delay if key in done else None

    while any(pointer[r] < len(schedule[r]) for r in range(p)):
        progressed = False
        for rank in range(p):
            while pointer[rank] < len(schedule[rank]):
                a = schedule[rank][pointer[rank]]
                ready = ready_time(rank, a)
                if ready is None:
                    break
                start = max(clock[rank], ready)
                clock[rank] = start + cost[a.op]
                done[(rank, a.op, a.microbatch, a.chunk)] = clock[rank]
                events[rank].append((a, start, clock[rank]))
                pointer[rank] += 1
                progressed = True
        if not progressed:
            waits = [f"rank {r} at {schedule[r][pointer[r]]!r}" for r in range(p)
                     if pointer[r] < len(schedule[r])]
            raise ScheduleDeadlockError(
                "deadlock: every unfinished rank waits for a message never sent (" +
                "; ".join(waits) + "). Reorder the actions so each input is produced first")
    return Timeline(events)


def peak_in_flight(schedule) -> list[int]:
    """Per rank, the most (micro-batch, chunk) activations held at once (F done, B not yet).

    For interleaved schedules each (micro-batch, chunk) pair holds 1/v of a stage's activations.
    """
    peaks = []
    for actions in schedule:
        held = peak = 0
        for a in actions:
            held += 1 if a.op == "F" else -1
            peak = max(peak, held)
        peaks.append(peak)
    return peaks


def bubble_fraction(kind: str, num_stages: int, num_microbatches: int,
                    num_chunks: int = 1) -> float:
    """Theoretical idle fraction of the pipeline: bubble time / total time.

    naive: (p-1)/p; GPipe and 1F1B: (p-1)/(m+p-1) (Huang et al. 2019); interleaved:
    (p-1)/(v m + p-1), i.e. bubble/ideal = (1/v)(p-1)/m (Narayanan et al. 2021, arXiv 2104.04473).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule kind {kind!r}; choose one of {SCHEDULES}")
    _check_sizes(num_stages, num_microbatches, num_chunks)
    p, m, v = num_stages, num_microbatches, num_chunks
    if kind == "naive":
        m = 1
    return (p - 1) / (v * m + p - 1)


def bubble_time_ratio(num_stages: int, num_microbatches: int, num_chunks: int = 1) -> float:
    """Bubble time / ideal time = (1/v)(p-1)/m (Narayanan et al. 2021, eq. 1 and section 2.2)."""
    _check_sizes(num_stages, num_microbatches, num_chunks)
    return (num_stages - 1) / (num_chunks * num_microbatches)
