"""Run a zero-bubble schedule on real ranks: the backward split into B and W.

B (input gradient): autograd from the stage's output back to its input, and to the output of
every layer that owns weights (Linear, LayerNorm, Embedding), keeping the graph: the input
gradient goes to the previous stage at once, and each layer's output gradient dy is kept. W
(weight gradient), run later: for each such layer, autograd from its output y with dy to its own
weights only (for a Linear, dW = dy^T x from the saved input x). Every weight gets exactly the
gradient of the unsplit backward, accumulated in .grad as usual (hooks fire, e.g. DDP's).

The messages, tags, loss scaling and StepRecord are the 1F1B runtime's (pipeline_runtime.py);
only the placement differs for ZB-V (rank r holds stages r and 2p-1-r).
"""
from __future__ import annotations

import functools
import time

import torch

from . import comm
from .pipeline_runtime import (GPTStage, PHASE, StepRecord, _tag, activation_dtype,
                               split_microbatches, timeline_from_records)
from .zero_bubble import (NUM_CHUNKS, bubble_formula, schedule_kind, simulate_zb, stage_holder,
                          virtual_stage)


def build_zb_stages(model, kind: str, pp_rank: int, pp_size: int) -> list[GPTStage]:
    """This rank's chunks of `model` for schedule `kind` (ZB-V: stages r and 2p-1-r)."""
    num_virtual = pp_size * NUM_CHUNKS[kind]
    return [GPTStage(model, virtual_stage(kind, pp_rank, c, pp_size), num_virtual)
            for c in range(NUM_CHUNKS[kind])]


def zb_owner(kind: str):
    """stage -> (rank, chunk) for `kind`, the `owner` argument of pipeline_forward."""
    return functools.partial(stage_holder, kind)


def layer_weights(module) -> list[torch.nn.Parameter]:
    """The weights a layer uses itself: those it owns, else a `weight` it borrows (the output layer
    tied to a tensor-parallel embedding calls F.linear on the embedding's weight)."""
    own = list(module.parameters(recurse=False))
    borrowed = getattr(module, "weight", None)
    return own or ([borrowed] if isinstance(borrowed, torch.nn.Parameter) else [])


def weight_layers(stage) -> list[torch.nn.Module]:
    """The modules of `stage` that use weights themselves (leaves in a GPT)."""
    layers = [m for m in stage.modules() if layer_weights(m)]
    for layer in layers:
        if any(True for _ in layer.parameters(recurse=False)) and any(
                any(True for _ in c.parameters()) for c in layer.children()):
            raise ValueError(f"{type(layer).__name__} owns weights and has sub-layers with "
                             f"weights; the B/W split needs weights in leaf modules only")
    return layers


def forward_keeping_layer_outputs(stage, x, targets):
    """stage(x, targets), and [(layer, its output y)] for every weight layer that ran."""
    outputs = []
    hooks = [layer.register_forward_hook(lambda mod, args, y: outputs.append((mod, y)))
             for layer in weight_layers(stage)]
    try:
        out = stage(x, targets)
    finally:
        for hook in hooks:
            hook.remove()
    used = [id(p) for layer, _ in outputs for p in layer_weights(layer)]
    if len(used) != len(set(used)):  # W of one use would run through the other's graph
        raise ValueError("a weight is used by two layers of one stage (the tied embedding and "
                         "output layer on a single stage): split the model into >= 2 stages")
    return out, [(layer, y) for layer, y in outputs if y.requires_grad]


def backward_input(out, grad, x, layer_outputs):
    """B: the gradient of x (None for token ids) and dy of every layer output, graph kept."""
    wanted = ([x] if x.requires_grad else []) + [y for _, y in layer_outputs]
    grads = torch.autograd.grad(out, wanted, grad, retain_graph=True, allow_unused=True)
    dx = grads[0] if x.requires_grad else None
    return dx, list(grads[len(wanted) - len(layer_outputs):])


def backward_weight(layer_outputs, output_grads) -> None:
    """W: each layer's weight gradient from its saved input and output gradient dy."""
    for (layer, y), dy in zip(layer_outputs, output_grads):
        if dy is not None:
            torch.autograd.backward(y, dy, inputs=layer_weights(layer))


def zero_bubble_step(stages, schedule, ctx, idx, targets, cost=None) -> StepRecord:
    """Run this rank's F, B, W actions of a zero-bubble `schedule` on `stages`; gradients
    accumulate (loss / m per micro-batch, as pipeline_step). Call zero_grad before."""
    simulate_zb(schedule)  # refuse a schedule that would deadlock, before any message
    kind = schedule_kind(schedule)
    p, v = len(schedule), NUM_CHUNKS[kind]
    m = 1 + max(a.microbatch for rank in schedule for a in rank)
    idx_mb, targets_mb, shape = split_microbatches(stages, ctx, idx, targets, p, m, v,
                                                   f"the {kind}")
    dtype, rank, last = activation_dtype(stages), ctx.pp_rank, p * v - 1
    local, sends, held, pending, events, losses = {}, [], {}, {}, [], []
    peak = 0

    def deliver(tensor, op, microbatch, stage):
        dst, chunk = stage_holder(kind, stage, p)
        if dst == rank:
            local[(op, microbatch, chunk)] = tensor.detach()
        else:
            sends.append(comm.isend(tensor, ctx.pp_ranks[dst], ctx, PHASE[op],
                                    tag=_tag(op, microbatch, chunk, v)))

    def receive(op, microbatch, chunk, stage):
        src = stage_holder(kind, stage, p)[0]
        if src == rank:
            return local.pop((op, microbatch, chunk))
        return comm.recv(shape, dtype, ctx.pp_ranks[src], ctx, PHASE[op],
                         tag=_tag(op, microbatch, chunk, v))

    comm.barrier(ctx, "pp")
    start = time.perf_counter()
    for a in schedule[rank]:
        stage_module = stages[a.chunk]
        s, key = virtual_stage(kind, rank, a.chunk, p), (a.microbatch, a.chunk)
        if a.op == "F":
            x = (idx_mb[a.microbatch] if s == 0
                 else receive("F", a.microbatch, a.chunk, s - 1).requires_grad_())
            t0 = time.perf_counter()
            out, layer_outputs = forward_keeping_layer_outputs(
                stage_module, x, targets_mb[a.microbatch] if s == last else None)
            if s == last:
                out = out / m                      # mean over micro-batches
                losses.append(out.detach())
            held[key] = (x, out, layer_outputs)
            peak, message = max(peak, len(held)), (None if s == last else (out, "F", s + 1))
        elif a.op == "B":
            x, out, layer_outputs = held[key]
            grad = None if s == last else receive("B", a.microbatch, a.chunk, s + 1)
            t0 = time.perf_counter()
            dx, pending[key] = backward_input(out, grad, x, layer_outputs)
            message = None if s == 0 else (dx, "B", s - 1)
        else:
            t0 = time.perf_counter()
            backward_weight(held.pop(key)[2], pending.pop(key))
            message = None
        if cost is not None:
            cost.spend(a.op, stage_module.num_layers)
        events.append((a, t0, time.perf_counter()))
        if message is not None:  # after the action's whole time, as pipeline_step
            tensor, op, stage = message
            deliver(tensor, op, a.microbatch, stage)
    for work in sends:
        work.wait()
    loss = float(torch.stack(losses).sum()) if losses else None
    return StepRecord(loss, events, start, peak)


def op_costs(records, num_chunks: int = 1) -> dict[str, float]:
    """Mean seconds of F, B and W per rank's share of the model (a chunk's time x num_chunks),
    measured on real ranks: the costs to give `simulate_zb` and `bubble_formula`."""
    durations = {}
    for record in records:
        for a, start, end in record.events:
            durations.setdefault(a.op, []).append(end - start)
    return {op: num_chunks * sum(d) / len(d) for op, d in sorted(durations.items())}


def bubble_report(kind: str, schedule, records) -> dict[str, float]:
    """The bubble per rank (seconds) of one step of `schedule` ("1f1b", "zb-h1" or "zbv") run on
    real ranks (StepRecords in pp-rank order), four ways: "formula" and "simulator" with this
    step's mean F, B, W (1F1B: F and the unsplit B); "replay", the simulator fed each action's own
    measured time; "measured". Measured minus replay is all the simulator leaves out: the time
    from an action's input being ready to its start (a receive waking up, posting sends, Python),
    at most "path_actions" times, a count of the actions on the longest chain: one rank's, plus
    the pipeline's fill and drain hops."""
    p, v = len(schedule), NUM_CHUNKS.get(kind, 1)
    m = 1 + max(a.microbatch for rank in schedule for a in rank)
    costs = op_costs(records, v)
    f, b, w = costs["F"], costs["B"], costs.get("W", 0.0)
    timeline = timeline_from_records(records)
    busy = sum(timeline.busy(r) for r in range(p)) / p                   # every rank's mean work
    replay = simulate_zb(schedule, durations=[[end - start for _, start, end in r.events]
                                              for r in records])
    return dict(formula=bubble_formula(kind, p, f, b, w),
                simulator=simulate_zb(schedule, f, b, w).makespan - m * (f + b + w),
                replay=replay.makespan - busy, measured=timeline.makespan - busy,
                path_actions=max(len(r) for r in schedule) + 2 * (p * v - 1))
