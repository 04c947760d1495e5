"""Zero-bubble pipeline schedules as data: the backward split into B (input gradient) and W
(weight gradient), and W moved into the bubble (Qi et al. 2024, "Zero Bubble Pipeline
Parallelism", arXiv 2401.10241).

B of stage s needs only B of stage s+1, and W needs only its own B, so W can wait: a schedule
delays W's to fill the time a rank would otherwise spend waiting. Kinds:

- "zb-h1": 1F1B's forwards and B's, rank r holding back its first r W's to the cool-down; the
  same activations in flight as 1F1B (torch's ScheduleInterleavedZeroBubble with one stage per
  rank, the paper's ZB1P).
- "zbv": two chunks per rank placed in a V: rank r holds virtual stages r and 2p-1-r, so the
  first and the last stage sit on rank 0 (torch's ScheduleZBVZeroBubble, the paper's ZB-V).
- "dualpipev": the same V, in DeepSeek's DualPipeV order (DeepSeek-V3, arXiv 2412.19437, cut
  to one V as torch's ScheduleDualPipeV): the steady state pairs a forward on one chunk with a
  whole backward (B then W) on the other, which a GPU overlaps; only the last backwards split.

Actions are schedule_types.Action (pipeline.Action) with op "F", "B" (input gradient only) or "W". `simulate_zb` replays a
schedule with costs F, B, W per stage, like pipeline.simulate; `bubble_formula` is the paper's.
"""
from __future__ import annotations

from .schedule_types import Action, ScheduleDeadlockError, ScheduleError, Timeline, _check_sizes

ZERO_BUBBLE_SCHEDULES = ("zb-h1", "zbv", "dualpipev")
NUM_CHUNKS = {"zb-h1": 1, "zbv": 2, "dualpipev": 2}


def virtual_stage(kind: str, rank: int, chunk: int, num_stages: int) -> int:
    """The virtual stage that chunk `chunk` of pipeline rank `rank` holds (V shape for zbv)."""
    return rank if chunk == 0 else 2 * num_stages - 1 - rank


def stage_holder(kind: str, stage: int, num_stages: int) -> tuple[int, int]:
    """(pipeline rank, chunk) holding virtual stage `stage`: the inverse of virtual_stage."""
    if stage < num_stages:
        return stage, 0
    return 2 * num_stages - 1 - stage, 1


def zb_h1_rank_actions(num_stages: int, rank: int, num_microbatches: int) -> list[Action]:
    """One rank's ZB-H1 order: p-rank-1 warm-up forwards, then F B pairs as 1F1B, each B followed
    by the oldest pending W once the rank has run `rank` B's; the held-back W's end the step."""
    p, m = num_stages, num_microbatches
    ### BEGIN SOLUTION
    warmup = min(p - rank - 1, m)
    actions = [Action("F", i) for i in range(warmup)]
    weights = 0
    for j in range(m):
        if warmup + j < m:
            actions.append(Action("F", warmup + j))
        actions.append(Action("B", j))
        if j >= rank:
            actions.append(Action("W", weights))
            weights += 1
    actions += [Action("W", i) for i in range(weights, m)]
    ### END SOLUTION
    return actions


def zbv_rank_actions(num_stages: int, rank: int, num_microbatches: int) -> list[Action]:
    """One rank's ZB-V order (chunk 0 = stage rank, chunk 1 = stage 2p-1-rank), as torch builds it:
    warm-up forwards on chunk 0, then chunk 1 joins; a steady F B W on each chunk; a cool-down of
    B's with the W's that fill its gaps. Planned for max(m, 2p-1) micro-batches, extra ones dropped."""
    p, m = num_stages, num_microbatches
    n = max(2 * p - 1, m)
    count = {(op, c): 0 for op in "FBW" for c in (0, 1)}
    actions = []

    def add(op, chunk):
        actions.append(Action(op, count[op, chunk], chunk))
        count[op, chunk] += 1

    for _ in range(2 * (p - rank) - 1):
        add("F", 0)
    for _ in range(rank):
        add("F", 1), add("F", 0)
    for _ in range(p - rank):
        add("F", 1), add("B", 1), add("W", 1)
    while count["F", 1] < count["F", 0] or count["F", 0] < n:
        if count["F", 0] < n:
            add("F", 0)
        add("B", 0), add("W", 0), add("F", 1), add("B", 1), add("W", 1)
    for _ in range(rank):
        add("B", 0), add("B", 1)
    for _ in range(p - rank):
        add("B", 0), add("W", 0)
    while count["W", 1] < count["B", 1]:
        add("W", 1)
    while count["W", 0] < count["B", 0]:
        add("W", 0)
    return [a for a in actions if a.microbatch < m]


def dualpipev_rank_actions(num_stages: int, rank: int, num_microbatches: int) -> list[Action]:
    """One rank's DualPipeV order (chunk 0 = stage rank, chunk 1 = stage 2p-1-rank), in torch's
    eight phases; a whole backward is written B then W, a held-back W runs oldest first."""
    p, r, m = num_stages, rank, num_microbatches
    count = {(op, c): 0 for op in "FB" for c in (0, 1)}
    held, actions = [], []                   # (chunk, micro-batch) of B's whose W waits

    def add(op, chunk, whole=False):
        i = count[op, chunk]
        count[op, chunk] += 1
        actions.append(Action(op, i, chunk))
        if op == "B" and whole:
            actions.append(Action("W", i, chunk))
        elif op == "B":
            held.append((chunk, i))

    def weight():
        if held:
            chunk, i = held.pop(0)
            actions.append(Action("W", i, chunk))

    for _ in range(2 * (p - r - 1)):                         # 1: forwards on chunk 0
        add("F", 0)
    for _ in range(r + 1):                                   # 2: chunk 1 joins
        add("F", 0), add("F", 1)
    for _ in range(p - r - 1):                               # 3: B W F on chunk 1
        add("B", 1), weight(), add("F", 1)
    for _ in range(m - 2 * p + r + 1):                       # 4: F0 with B1, F1 with B0
        add("F", 0), add("B", 1, whole=True), add("F", 1), add("B", 0, whole=True)
    for _ in range(p - r - 1):                               # 5: B1, then F1 with B0
        add("B", 1, whole=True), add("F", 1), add("B", 0, whole=True)
    split = False
    for i in range(r + 1):                                   # 6: backwards; the later ones split
        split = split or (i == (r + 1) // 2 and r % 2 == 1)
        add("B", 1, whole=not split)
        split = split or (i == (r + 1) // 2 and r % 2 == 0)
        add("B", 0, whole=not split)
    for _ in range(p - r - 1):                               # 7: a held W, then B on chunk 0
        weight(), add("B", 0, whole=not split)
    for _ in range(r + 1):                                   # 8: the W's still held
        weight()
    return actions


def zero_bubble_schedule(kind: str, num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """Per pipeline rank, the ordered F, B, W Actions of one step of `kind` (see module doc)."""
    if kind not in ZERO_BUBBLE_SCHEDULES:
        raise ValueError(f"unknown zero-bubble kind {kind!r}; choose one of {ZERO_BUBBLE_SCHEDULES}")
    _check_sizes(num_stages, num_microbatches, 1)
    p, m = num_stages, num_microbatches
    if kind == "zb-h1" and m > p and m % p:
        raise ValueError(f"zb-h1 needs m <= p or m a multiple of p (as torch's "
                         f"ScheduleInterleavedZeroBubble); got m={m}, p={p}")
    if kind == "dualpipev" and m < 2 * p:
        raise ValueError(f"dualpipev needs at least 2p = {2 * p} micro-batches (as torch's "
                         f"ScheduleDualPipeV); got m={m}")
    make = {"zb-h1": zb_h1_rank_actions, "zbv": zbv_rank_actions,
            "dualpipev": dualpipev_rank_actions}[kind]
    return [make(p, rank, m) for rank in range(p)]


def schedule_kind(schedule) -> str:
    """"zbv" when any action runs on chunk 1, else "zb-h1"."""
    return "zbv" if any(a.chunk for rank in schedule for a in rank) else "zb-h1"


def simulate_zb(schedule, forward_cost: float = 1.0, backward_cost: float = 1.0,
                weight_cost: float = 1.0, comm_cost: float = 0.0,
                durations: list[list[float]] | None = None) -> Timeline:
    """Replay an F/B/W schedule (or a 1F1B one: F and unsplit B) with blocking receives. Costs
    are per pipeline rank's share of the model; a zbv chunk holds half of it, so its actions cost
    half. F on stage s waits for F on s-1, B for B on s+1 (the last stage: its own F), W for its
    own B. `durations` (per rank, each action's own time, e.g. measured) replaces the costs."""
    kind = schedule_kind(schedule)
    p, v = len(schedule), NUM_CHUNKS[kind]
    num_virtual = p * v
    cost = {"F": forward_cost / v, "B": backward_cost / v, "W": weight_cost / v}
    if durations is not None and [len(d) for d in durations] != [len(r) for r in schedule]:
        raise ValueError(f"durations has {[len(d) for d in durations]} actions per rank, the "
                         f"schedule {[len(r) for r in schedule]}: give one time per action")
    done, pointer, clock = {}, [0] * p, [0.0] * p
    events = [[] for _ in range(p)]

    def ready_time(rank, a):
        s = virtual_stage(kind, rank, a.chunk, p)
        if a.op == "W":
            key = ("B", a.microbatch, s)
        elif a.op == "F":
            if s == 0:
                return 0.0
            key = ("F", a.microbatch, s - 1)
        else:
            key = ("F", a.microbatch, s) if s == num_virtual - 1 else ("B", a.microbatch, s + 1)
        if key not in done:
            return None
        other = stage_holder(kind, key[2], p)[0] != rank
        return done[key] + comm_cost * other

    while any(pointer[r] < len(schedule[r]) for r in range(p)):
        progressed = False
        for rank in range(p):
            while pointer[rank] < len(schedule[rank]):
                a = schedule[rank][pointer[rank]]
                if a.op not in cost:
                    raise ScheduleError(f"rank {rank}: op {a.op!r} must be 'F', 'B' or 'W'")
                ready = ready_time(rank, a)
                if ready is None:
                    break
                start = max(clock[rank], ready)
                clock[rank] = start + (cost[a.op] if durations is None
                                       else durations[rank][pointer[rank]])
                done[(a.op, a.microbatch, virtual_stage(kind, rank, a.chunk, p))] = clock[rank]
                events[rank].append((a, start, clock[rank]))
                pointer[rank] += 1
                progressed = True
        if not progressed:
            waits = [f"rank {r} at {schedule[r][pointer[r]]!r}" for r in range(p)
                     if pointer[r] < len(schedule[r])]
            raise ScheduleDeadlockError("deadlock: every unfinished rank waits for an action "
                                        "never run (" + "; ".join(waits) + ")")
    return Timeline(events)


def bubble_time(schedule, forward_cost: float, backward_cost: float, weight_cost: float) -> float:
    """Simulated idle time per rank: makespan minus the m (F + B + W) of work every rank does."""
    m = 1 + max(a.microbatch for rank in schedule for a in rank)
    timeline = simulate_zb(schedule, forward_cost, backward_cost, weight_cost)
    return timeline.makespan - m * (forward_cost + backward_cost + weight_cost)


def bubble_formula(kind: str, num_stages: int, forward_cost: float, backward_cost: float,
                   weight_cost: float) -> float:
    """The bubble time per rank of Qi et al. (section 2): 1F1B (p-1)(F+B+W) (its backward is B+W),
    ZB-H1 (p-1)(F+B-W) (a third of 1F1B's when F = B = W), ZB-H2 and ZB-V 0 when F = B = W.
    ZB-H1's holds for W <= B; with W > B a held-back W can fill only a B's gap and the
    simulator finds (p-1)F, i.e. (p-1)(F+B-min(B, W)), which is what this returns."""
    p = num_stages
    if kind == "1f1b":
        return (p - 1) * (forward_cost + backward_cost + weight_cost)
    if kind == "zb-h1":
        return (p - 1) * (forward_cost + backward_cost - min(backward_cost, weight_cost))
    if kind in ("zb-h2", "zbv"):
        return 0.0
    raise ValueError(f"schedule={kind!r} has no bubble formula here; choose '1f1b', 'zb-h1', "
                     f"'zb-h2' or 'zbv'")


def peak_in_flight_zb(schedule) -> list[int]:
    """Per rank, the most (micro-batch, chunk) activations held at once: from F until W (B frees
    only part of them; W still needs the layers' inputs)."""
    peaks = []
    for actions in schedule:
        held = peak = 0
        for a in actions:
            held += {"F": 1, "B": 0, "W": -1}[a.op]
            peak = max(peak, held)
        peaks.append(peak)
    return peaks
