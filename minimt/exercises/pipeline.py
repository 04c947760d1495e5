"""Checkers for 04_pipeline_parallel's exercises (micro-batches for a bubble target, messages per
rank, the time of an interleaved step), and the task: the 1F1B and interleaved schedule generator, checked by the event simulator
(valid, no deadlock, GPipe's bubble) and the activation memory 1F1B promises."""
from __future__ import annotations

from typing import Callable

from .core import ExerciseError, call, needs_tasks, run_cases, task


def _exact_cases(exercise: str, fn: Callable, expected: Callable, cases: list[tuple],
                 hint: Callable) -> None:
    """fn(*case) must equal expected(*case) exactly (counts); else the case, got, expected and
    hint(got, *case)."""
    for i, case in enumerate(cases):
        got, want = call(exercise, fn, *case), expected(*case)
        if got != want:
            raise ExerciseError(f"{exercise}, case {i + 1} of {len(cases)} {case}: got {got!r}, "
                                f"expected {want}; {hint(got, *case)}")
    print(f"{exercise}: all {len(cases)} cases pass")


def check_min_microbatches(fn: Callable) -> None:
    """fn(num_stages, target) -> the fewest micro-batches m for which 1F1B (or GPipe: the same
    makespan) idles at most `target` of the time, checked by scanning the event simulator."""
    import math

    from ..parallel.pipeline import pipeline_schedule, simulate

    def simulated(p, target):
        return next(m for m in range(1, 1000)
                    if simulate(pipeline_schedule("gpipe", p, m)).idle_fraction() <= target + 1e-12)

    def hint(got, p, target):
        return ("that keeps (p-1)/m, the bubble over the ideal time, under the target; the idle "
                "fraction is (p-1)/(m+p-1)" if got == math.ceil((p - 1) / target) else
                "the smallest integer m with (p-1)/(m+p-1) <= target")

    cases = [(2, 0.33), (4, 0.33), (4, 0.17), (8, 0.22), (8, 0.45), (3, 0.6)]
    _exact_cases("check_min_microbatches", fn, simulated, cases, hint)


@needs_tasks
def check_messages_sent(fn: Callable) -> None:
    """fn(num_stages, num_microbatches, num_chunks, rank) -> how many point-to-point messages
    (activations and gradients) `rank` sends in one step of 1F1B (num_chunks 1) or interleaved
    1F1B, counted from your schedule (task 04.1) by the runtime's routing rule."""
    from ..parallel.pipeline import p2p_messages, pipeline_schedule

    def counted(p, m, v, rank):
        sends, _ = p2p_messages(pipeline_schedule("interleaved" if v > 1 else "1f1b", p, m, v))
        return sum(1 for message in sends if message[0] == rank)

    def hint(got, p, m, v, rank):
        return ("every F sends its activation on and every B its gradient back, except at the "
                "two ends of the pipeline: the last virtual stage's F and the first one's B"
                if rank in (0, p - 1) else
                "a rank in the middle sends after each of its forwards and backwards, on every chunk")

    cases = [(4, 8, 1, 0), (4, 8, 1, 1), (4, 8, 1, 3), (4, 8, 2, 0), (4, 8, 2, 2), (2, 4, 3, 1)]
    _exact_cases("check_messages_sent", fn, counted, cases, hint)


@needs_tasks
def check_step_time(fn: Callable) -> None:
    """fn(num_stages, num_microbatches, num_chunks, forward_time, backward_time) -> the time of
    one step of interleaved 1F1B (1F1B when num_chunks is 1), messages free, when a whole stage's
    forward takes forward_time (each of its num_chunks chunks 1/num_chunks of it): the event
    simulator's makespan of your schedule (task 04.1)."""
    from ..parallel.pipeline import pipeline_schedule, simulate

    def simulated(p, m, v, forward, backward):
        schedule = pipeline_schedule("interleaved" if v > 1 else "1f1b", p, m, v)
        return simulate(schedule, forward_cost=forward, backward_cost=backward).makespan

    cases = [(4, 8, 1, 1.0, 2.0), (4, 8, 2, 1.0, 2.0), (4, 4, 2, 0.5, 1.0), (2, 4, 3, 3.0, 6.0),
             (4, 8, 2, 1.0, 3.0)]
    run_cases("check_step_time", fn, simulated, cases, atol=1e-9, rtol=0)


# ---------------------------------------------------------------------------- tasks in the package

def _check_schedule_task() -> None:
    """pipeline_schedule("1f1b" / "interleaved", p, m, v): every rank runs each (micro-batch,
    chunk) forward and backward once, in order; the simulator finds no deadlock and GPipe's
    bubble (p-1)/(vm+p-1); 1F1B's rank r never holds more than min(p - r, m) activations."""
    from ..parallel.pipeline import Action, ScheduleError, peak_in_flight, simulate, validate_schedule
    from .core import learner
    pipeline_schedule = learner("minimt.parallel.pipeline:pipeline_schedule")
    cases = [("1f1b", 2, 1, 1), ("1f1b", 4, 8, 1), ("1f1b", 4, 2, 1), ("1f1b", 3, 5, 1),
             ("interleaved", 2, 4, 2), ("interleaved", 4, 8, 2), ("interleaved", 2, 2, 3)]
    for i, (kind, p, m, v) in enumerate(cases):
        name = f"task 04.1, case {i + 1} of {len(cases)} ({kind}, p={p}, m={m}, v={v})"
        got = pipeline_schedule(kind, p, m, v)
        if not isinstance(got, list) or len(got) != p:
            raise ExerciseError(f"{name}: expected a list with one list of Actions per rank ({p}), "
                                f"got {type(got).__name__} of length {len(got) if hasattr(got, '__len__') else '?'}")
        for rank, actions in enumerate(got):
            if any(not isinstance(a, Action) for a in actions):
                raise ExerciseError(f"{name}, rank {rank}: the list must hold Action(op, "
                                    f"microbatch, chunk) items")
            for op in "FB":
                mine = [(a.microbatch, a.chunk) for a in actions if a.op == op]
                if sorted(mine) != sorted((mb, c) for mb in range(m) for c in range(v)):
                    raise ExerciseError(f"{name}, rank {rank}: the {op} actions are {mine}; every "
                                        f"(micro-batch, chunk) needs exactly one {op}")
                if v == 1 and [mb for mb, _ in mine] != list(range(m)):
                    raise ExerciseError(f"{name}, rank {rank}: {op} micro-batches run in the order "
                                        f"{[mb for mb, _ in mine]}; run them 0, 1, 2, ...")
        try:
            validate_schedule(got)
            timeline = simulate(got)
        except ScheduleError as err:
            raise ExerciseError(f"{name}: the schedule cannot run: {err}. Hint: rank r can do "
                                f"only as many forwards before its first backward as the "
                                f"p - r - 1 stages after it need to fill up") from None
        expected = (p - 1) / (v * m + p - 1)
        if abs(timeline.idle_fraction() - expected) > 1e-9:
            raise ExerciseError(f"{name}: the simulator finds an idle fraction of "
                                f"{timeline.idle_fraction():.4f}, expected (p-1)/(vm+p-1) = "
                                f"{expected:.4f}. Hint: start each rank's first backward right "
                                f"after its warm-up forwards, then alternate one forward, one backward")
        if kind == "1f1b":
            peaks = peak_in_flight(got)
            promised = [min(p - r, m) for r in range(p)]
            if peaks != promised:
                raise ExerciseError(f"{name}: ranks hold {peaks} activations at most, 1F1B holds "
                                    f"{promised}. Hint: rank r warms up with p - r - 1 forwards "
                                    f"(at most m), then alternates one forward, one backward, then "
                                    f"runs the remaining backwards")
    print(f"task 04.1: the simulator runs all {len(cases)} schedules with GPipe's bubble; 1F1B "
          f"holds min(p - r, m) activations on rank r")


P2P_CASES = [("gpipe", 2, 1), ("interleaved", 2, 2)]  # (kind, micro-batches, chunks per rank)


def _pipeline_rank(ctx):
    """Pipeline steps of a 4-layer GPT on this stage (GPipe, and interleaved with 2 chunks per
    rank), the serial model's loss and gradients for the same batch, and what comm counted."""
    import torch
    from ..config import GPTConfig
    from ..model import GPT
    from ..parallel.comm import CommCounter
    from ..parallel.pipeline import pipeline_schedule
    from ..parallel.pipeline_runtime import build_stages, pipeline_step, sync_tied_grads
    config = GPTConfig(vocab_size=17, block_size=8, n_layer=4, n_head=2, n_embd=16)
    g = torch.Generator().manual_seed(1)
    idx, targets = (torch.randint(17, (4, 8), generator=g) for _ in range(2))   # (B, T) each
    torch.manual_seed(0)
    serial = GPT(config)                                   # build_stages uses the same seed
    _, loss = serial(idx, targets)
    loss.backward()
    expected = dict(serial.named_parameters(remove_duplicate=False))  # lm_head.weight is wte.weight
    out = []
    for kind, m, v in P2P_CASES:
        stages = build_stages(config, ctx.pp_rank, ctx.pp_size, num_chunks=v, seed=0)
        try:
            with CommCounter() as counter:
                record = pipeline_step(stages, pipeline_schedule(kind, ctx.pp_size, m, v), ctx,
                                       idx, targets)
            sync_tied_grads(stages, ctx)
        except NotImplementedError:
            raise
        except Exception as err:
            return {"exception": type(err).__name__, "message": f"{kind}: {err}"}
        grads = {f"chunk {chunk}: {name}": (p.grad, expected[name].grad)
                 for chunk, stage in enumerate(stages) for name, p in stage.named_parameters()}
        p2p = [(r.kind, r.phase) for r in counter.records if r.kind in ("send", "recv")]
        out.append({"loss": record.loss, "expected loss": loss.item(), "grads": grads, "p2p": p2p})
    return out


def _check_p2p_task() -> None:
    """deliver/receive in pipeline_step: on 2 pipeline stages x 2 data-parallel replicas, a GPipe
    step and an interleaved step (2 chunks per rank) of a 4-layer GPT give the serial loss and
    gradients; on 1 stage with 2 chunks, messages to this rank's own chunks pass through `local`;
    every message goes through comm with phase PHASE[op] ("forward" for F, "backward" for B)."""
    import torch
    from ..parallel import LaunchTimeout, launch
    for sizes in (dict(pp=2, dp=2), dict(pp=1)):
        try:
            results = launch(_pipeline_rank, timeout_s=60, **sizes)
        except LaunchTimeout:
            raise ExerciseError("task 04.2: the ranks waited forever for a message: every receive "
                                "needs a send to the same peer (ranks[dst], the global rank of "
                                "the pipeline group's rank dst) with the same tag, "
                                "_tag(op, microbatch, chunk, v)") from None
        for rank, by_case in enumerate(results):
            where = f"task 04.2, rank {rank} of a {sizes.get('pp')}-stage pipeline" + (
                f" x {sizes['dp']} data-parallel replicas" if sizes.get("dp") else "")
            if isinstance(by_case, dict) and "exception" in by_case:
                raise ExerciseError(f"{where}: your code raised {by_case['exception']}: "
                                    f"{by_case['message']}. Hint: receive returns a (B/m, T, C) "
                                    f"tensor of `shape` and `dtype` (comm.recv(shape, dtype, "
                                    f"ranks[src], ctx, PHASE[op], tag=...)); deliver sends with "
                                    f"comm.isend(tensor, ranks[dst], ctx, PHASE[op], tag=...) and "
                                    f"keeps the request in `sends`; a stage held by this rank "
                                    f"goes through the dict `local`")
            for (kind, m, v), r in zip(P2P_CASES, by_case):
                name = f"{where}, {kind} ({m} micro-batches of (2, 8) tokens, {v} chunk(s) per rank)"
                last = rank % sizes["pp"] == sizes["pp"] - 1 if "dp" in sizes else True
                if last and (r["loss"] is None or abs(r["loss"] - r["expected loss"]) > 1e-5):
                    raise ExerciseError(f"{name}: loss {r['loss']!r}, the serial model's is "
                                        f"{r['expected loss']:.6f}. Hint: the last stage must "
                                        f"receive the activation the previous stage sent for this "
                                        f"micro-batch")
                for param, (grad, expected) in r["grads"].items():
                    if grad is None or not torch.allclose(grad, expected, atol=1e-5):
                        hint = ("no gradient reached this stage: B must deliver x.grad to the "
                                "previous stage, which receives it before its backward"
                                if grad is None else "the gradient that came back belongs to "
                                "another micro-batch or stage: name each message by the action "
                                "that receives it (the tag, _tag(op, microbatch, chunk, v))")
                        raise ExerciseError(f"{name}: gradient of {param} differs from the serial "
                                            f"model's. Hint: {hint}")
                unlabelled = [(k, phase) for k, phase in r["p2p"]
                              if phase not in ("forward", "backward")]
                if unlabelled:
                    raise ExerciseError(f"{name}: {len(unlabelled)} messages counted with phase "
                                        f"{unlabelled[0][1]!r}. Hint: pass phase=PHASE[op] to "
                                        f"comm.isend and comm.recv, so the CommCounter files "
                                        f"activations under 'forward' and gradients under "
                                        f"'backward'")
                if kind == "gpipe" and "dp" in sizes:
                    sent = {phase for k, phase in r["p2p"] if k == "send"}
                    right = {"forward"} if rank % sizes["pp"] == 0 else {"backward"}
                    if sent != right:
                        raise ExerciseError(f"{name}: this stage's sends are counted as {sent}, "
                                            f"expected {right}. Hint: phase=PHASE[op]: F sends "
                                            f"activations ('forward'), B gradients ('backward')")
    print("task 04.2: GPipe and interleaved steps on 2 stages x 2 replicas, and 2 chunks on one "
          "stage, give the serial loss and gradients; every message counted with its phase")


TASKS = [
    task("04.1", 3, "write the 1F1B (and interleaved) part of pipeline_schedule",
         "minimt.parallel.pipeline:pipeline_schedule", "notebook 04, section 4", _check_schedule_task),
    task("04.2", 2, "write deliver and receive in pipeline_step (comm.isend / comm.recv with "
         "phase=PHASE[op] and tag=_tag(op, microbatch, chunk, v); a stage on this rank through "
         "`local`)",
         "minimt.parallel.pipeline_runtime:pipeline_step", "notebook 04, section 6", _check_p2p_task),
]
