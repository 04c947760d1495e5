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


def _pipeline_rank(ctx):
    """One pipeline step of a 4-layer GPT on this stage (GPipe schedule), and the serial model's
    loss and gradients for the same batch."""
    import torch
    from ..config import GPTConfig
    from ..model import GPT
    from ..parallel.pipeline import pipeline_schedule
    from ..parallel.pipeline_runtime import build_stages, pipeline_step, sync_tied_grads
    config = GPTConfig(vocab_size=17, block_size=8, n_layer=4, n_head=2, n_embd=16)
    g = torch.Generator().manual_seed(1)
    idx, targets = (torch.randint(17, (4, 8), generator=g) for _ in range(2))   # (B, T) each
    torch.manual_seed(0)
    serial = GPT(config)                                   # build_stages uses the same seed
    _, loss = serial(idx, targets)
    loss.backward()
    stages = build_stages(config, ctx.pp_rank, ctx.pp_size, seed=0)
    try:
        record = pipeline_step(stages, pipeline_schedule("gpipe", ctx.pp_size, 2), ctx, idx, targets)
        sync_tied_grads(stages, ctx)
    except NotImplementedError:
        raise
    except Exception as err:
        return {"exception": type(err).__name__, "message": str(err)}
    grads = {name: p.grad for stage in stages for name, p in stage.named_parameters()}
    expected = dict(serial.named_parameters(remove_duplicate=False))  # lm_head.weight is wte.weight
    return {"loss": record.loss, "expected loss": loss.item(),
            "grads": grads, "expected grads": {n: expected[n].grad for n in grads}}


def _check_p2p_task() -> None:
    """deliver/receive in pipeline_step on 2 pipeline ranks: a GPipe step of a 4-layer GPT gives
    the serial model's loss and the serial gradients of every parameter."""
    import torch
    from ..parallel import LaunchTimeout, launch
    try:
        results = launch(_pipeline_rank, pp=2, timeout_s=60)
    except LaunchTimeout:
        raise ExerciseError("task 04.2: the ranks waited forever for a message: every receive needs "
                            "a send to the same peer (ranks[dst] of the pipeline group) with the same "
                            "tag, _tag(op, microbatch, chunk, v)") from None
    for rank, r in enumerate(results):
        name = f"task 04.2, pipeline rank {rank} of 2 (GPipe, 2 micro-batches of (2, 8) tokens)"
        if "exception" in r:
            raise ExerciseError(f"{name}: your code raised {r['exception']}: {r['message']}. Hint: "
                                f"receive returns a (B/m, T, C) tensor (`shape`); deliver sends with "
                                f"dist.isend and keeps the request in `sends`")
        if rank == 1 and (r["loss"] is None or abs(r["loss"] - r["expected loss"]) > 1e-5):
            raise ExerciseError(f"{name}: loss {r['loss']!r}, the serial model's is "
                                f"{r['expected loss']:.6f}. Hint: the last stage must receive the "
                                f"activation the previous stage sent for this micro-batch")
        for param, grad in r["grads"].items():
            expected = r["expected grads"][param]
            if grad is None or not torch.allclose(grad, expected, atol=1e-5):
                hint = ("no gradient reached this stage: B must deliver x.grad to the previous "
                        "stage, which receives it before its backward" if grad is None else
                        "the gradient that came back belongs to another micro-batch or stage: "
                        "name each message by the action that receives it (the tag)")
                raise ExerciseError(f"{name}: gradient of {param} differs from the serial model's. "
                                    f"Hint: {hint}")
    print("task 04.2: a GPipe step on 2 processes gives the serial loss and gradients")


TASKS = [
    task("04.1", 3, "write the 1F1B (and interleaved) part of pipeline_schedule",
         "minimt.parallel.pipeline:pipeline_schedule", "notebook 04, section 4", _check_schedule_task),
    task("04.2", 2, "write deliver and receive in pipeline_step (activations and gradients between stages)",
         "minimt.parallel.pipeline_runtime:pipeline_step", "notebook 04, section 6", _check_p2p_task),
]
