"""Run a pipeline schedule on real ranks: a GPT cut into stages, activations and gradients by p2p.

Each pipeline rank holds v chunks (virtual stages chunk * p + rank, as in Megatron-LM's
interleaved schedule; v = 1 otherwise). `pipeline_step` executes the rank's list of Actions from
`pipeline_schedule`, accumulates gradients over the m micro-batches with the loss divided by m (so
it equals the serial model's mean loss on the whole batch), and records when each action ran.

Sends are posted with isend and waited for at the end of the step; only receives block, which is
the model `pipeline.simulate` checks for deadlock. Messages carry a tag naming (op, micro-batch,
chunk), so their order on the wire does not matter.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..checks import check_token_ids
from ..model import GPT, IGNORE_INDEX
from . import comm
from .pipeline import Action, Timeline, message_route, schedule_shape, stage_owner, validate_schedule


def stage_layers(n_layer: int, num_stages: int) -> list[range]:
    """Blocks of each (virtual) stage: contiguous, sizes differing by at most one, earlier first."""
    if num_stages > n_layer:
        raise ValueError(f"cannot cut n_layer={n_layer} blocks into {num_stages} pipeline stages: "
                         f"use at most {n_layer} stages (p * num_chunks) or a deeper model")
    base, extra = divmod(n_layer, num_stages)
    bounds = [0]
    for s in range(num_stages):
        bounds.append(bounds[-1] + base + (s < extra))
    return [range(bounds[s], bounds[s + 1]) for s in range(num_stages)]


class GPTStage(nn.Module):
    """Consecutive blocks of a GPT; the first stage also embeds, the last also computes the loss.

    Parameter names are the serial model's (transformer.h.3.attn..., lm_head.weight), so gradients
    can be compared name by name. The modules are shared with `model`, not copied, and the first
    and last steps are GPT's own `embed` and `head`; blocks run through the model's `run_block`,
    so its activation recomputation (`model.recompute`) holds in every stage.
    """

    embed, head = GPT.embed, GPT.head

    def __init__(self, model: GPT, stage: int, num_stages: int):
        super().__init__()
        self.stage, self.is_first, self.is_last = stage, stage == 0, stage == num_stages - 1
        layers = stage_layers(model.config.n_layer, num_stages)[stage]
        parts = {"h": nn.ModuleDict({str(i): model.transformer.h[i] for i in layers})}
        if self.is_first:
            parts.update(wte=model.transformer.wte, wpe=model.transformer.wpe,
                         drop=model.transformer.drop)
        if self.is_last:
            parts["ln_f"] = model.transformer.ln_f
            self.lm_head = model.lm_head  # tied to wte: the same Parameter when both are here
            self.loss_fn = model.loss_fn
        self.transformer = nn.ModuleDict(parts)
        self.config = model.config  # a dataclass, not a module: what checkpoints record
        self.run_block = model.run_block  # a bound method: follows model.recompute
        self.num_layers, self.n_embd = len(layers), model.config.n_embd

    def forward(self, x, targets=None):
        """First stage: idx (B, T) -> hidden; middle: hidden (B, T, C) -> hidden; last: -> the
        loss, or the logits (B, T, V) without targets (as torch.distributed.pipelining wants)."""
        if self.is_first:
            check_token_ids(x, self.config.vocab_size, "idx")
            x = self.embed(x)                                                       # (B, T, C)
        if self.is_last and targets is not None:
            check_token_ids(targets, self.config.vocab_size, "targets", IGNORE_INDEX,
                            dtypes=(torch.long,))
        for block in self.transformer.h.values():
            x = self.run_block(block, x)                                            # (B, T, C)
        if not self.is_last:
            return x
        logits, loss = self.head(x, targets)                                        # (B, T, V)
        return logits if targets is None else loss


def build_stages(config, pp_rank: int, pp_size: int, num_chunks: int = 1, seed: int = 0):
    """This rank's chunks [stage rank, p + rank, 2p + rank, ...] of GPT(config) built with `seed`.

    Every rank builds the whole (course-sized) model with the same seed, so the weights equal the
    serial model's, then keeps its own blocks (Megatron builds only its layers).
    """
    torch.manual_seed(seed)
    model = GPT(config)
    num_virtual = pp_size * num_chunks
    return [GPTStage(model, c * pp_size + pp_rank, num_virtual) for c in range(num_chunks)]


def stage_parameters(stages) -> list[nn.Parameter]:
    """The parameters of this rank's chunks, each once (on one rank wte and lm_head are one)."""
    unique = {}
    for stage in stages:
        for param in stage.parameters():
            unique.setdefault(id(param), param)
    return list(unique.values())


@dataclass
class ActionCost:
    """A controlled cost added to every action: per block, forward_s for F and 2x for B.

    mode "sleep" is simulated compute: the rank waits without using a core, so 4 ranks on 2 cores
    do not compete and the bubble is measured cleanly. mode "matmul" does real work: a fixed
    number of 256x256 matmuls per block, calibrated to forward_s on one thread when built (build
    it before `launch`, so every rank does the same work).
    """

    forward_s: float = 0.005
    mode: str = "sleep"
    backward_factor: float = 2.0
    matmuls_per_layer: int = field(init=False, default=0)

    def __post_init__(self):
        if self.mode not in ("sleep", "matmul"):
            raise ValueError(f"mode={self.mode!r} must be 'sleep' (simulated) or 'matmul' (real)")
        if self.mode == "matmul":  # calibrate on one thread, as every rank runs
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            a = torch.randn(256, 256)
            start = time.perf_counter()
            for _ in range(20):
                a @ a
            seconds = (time.perf_counter() - start) / 20
            torch.set_num_threads(threads)
            self.matmuls_per_layer = max(1, round(self.forward_s / seconds))

    def spend(self, op: str, num_layers: int) -> None:
        """Spend the cost of one action over `num_layers` blocks."""
        factor = num_layers * (self.backward_factor if op == "B" else 1.0)
        if self.mode == "sleep":
            time.sleep(self.forward_s * factor)
            return
        a = torch.ones(256, 256)
        for _ in range(math.ceil(self.matmuls_per_layer * factor)):
            a @ a


@dataclass
class StepRecord:
    """What one rank saw in one step: its loss (last stage), action times and peak memory."""

    loss: float | None
    events: list[tuple[Action, float, float]]  # (action, start, end), time.perf_counter seconds
    start: float                               # after the barrier that starts the step
    peak_in_flight: int                        # most (micro-batch, chunk) activations held at once


PHASE = {"F": "forward", "B": "backward"}  # how CommCounter records each op's messages


def activation_dtype(stages) -> torch.dtype:
    """The dtype of the hidden states between stages: the blocks' weights' (fp32, or 16-bit for
    a model cast to bf16/fp16; under autocast the residual stream stays fp32)."""
    return next(stages[0].transformer.h.parameters()).dtype


def split_microbatches(stages, ctx, idx, targets, p: int, m: int, v: int, name: str = "the"):
    """Refuse `stages` that do not fit a schedule of p ranks x v chunks, or a batch that m does
    not divide; return the m micro-batches of idx and targets and the shape of every message."""
    if p != ctx.pp_size or len(stages) != v:
        raise ValueError(f"{name} schedule is for p={p} ranks x v={v} chunks, but the pipeline "
                         f"group has {ctx.pp_size} ranks and this rank holds {len(stages)} chunks")
    if idx.shape[0] % m:
        raise ValueError(f"batch size {idx.shape[0]} is not divisible by num_microbatches={m}; "
                         f"choose a batch size that is a multiple of {m}")
    shape = (idx.shape[0] // m, idx.shape[1], stages[0].n_embd)  # (B/m, T, C) of every message
    return idx.chunk(m), targets.chunk(m), shape                 # m x (B/m, T) each


def _tag(op: str, microbatch: int, chunk: int, num_chunks: int) -> int:
    """A gloo message tag naming the receiving action."""
    return 2 * (microbatch * num_chunks + chunk) + (op == "B")


def pipeline_step(stages, schedule, ctx, idx, targets,
                  cost: ActionCost | None = None) -> StepRecord:
    """Run this rank's actions of `schedule` on `stages` (its chunks); gradients accumulate.

    idx, targets: the whole batch (B, T); B must be divisible by the schedule's micro-batches.
    The first stage reads idx, the last targets. Call `optimizer.zero_grad()` before, and
    `sync_tied_grads` after, as the Trainer does (minimt.parallel.layout.MeshModel).
    """
    validate_schedule(schedule)  # refuse a schedule that would deadlock, before any message
    p, m, v = schedule_shape(schedule)
    idx_mb, targets_mb, shape = split_microbatches(stages, ctx, idx, targets, p, m, v)
    dtype = activation_dtype(stages)
    rank, ranks = ctx.pp_rank, ctx.pp_ranks
    local, sends, held, events, losses = {}, [], {}, [], []
    peak = 0

    def deliver(tensor, op, microbatch, stage):
        """Hand `tensor` to virtual stage `stage` (F: activation, B: gradient). Its owner is
        (dst, chunk) = stage_owner(stage, p). A stage on this rank (dst == rank) gets
        tensor.detach() in the dict `local`, keyed (op, microbatch, chunk); another rank gets
        comm.isend(tensor, ranks[dst], ctx, PHASE[op], tag=_tag(op, microbatch, chunk, v)),
        whose request goes into `sends` (waited for at the end of the step)."""
        ### BEGIN SOLUTION
        dst, chunk = stage_owner(stage, p)
        if dst == rank:
            local[(op, microbatch, chunk)] = tensor.detach()
        else:
            sends.append(comm.isend(tensor, ranks[dst], ctx, PHASE[op],
                                    tag=_tag(op, microbatch, chunk, v)))
        ### END SOLUTION

    def receive(op, microbatch, chunk, stage):
        """The (op, microbatch, chunk) message from virtual stage `stage`: a (B/m, T, C) tensor
        of `shape` and `dtype`. From this rank (stage_owner(stage, p)[0] == rank): pop it from
        `local`; else comm.recv(shape, dtype, ranks[src], ctx, PHASE[op], tag=_tag(op, microbatch,
        chunk, v)). ranks[i] is the global rank of pipeline rank i; PHASE[op] files the message
        under "forward" or "backward" in the CommCounter."""
        ### BEGIN SOLUTION
        src = stage_owner(stage, p)[0]
        if src == rank:
            return local.pop((op, microbatch, chunk))
        return comm.recv(shape, dtype, ranks[src], ctx, PHASE[op],
                         tag=_tag(op, microbatch, chunk, v))
        ### END SOLUTION

    comm.barrier(ctx, "pp")  # start together, so that the ranks' timelines line up
    start = time.perf_counter()
    for a in schedule[rank]:
        stage_module, s = stages[a.chunk], a.chunk * p + rank
        source, target = message_route(a.op, s, p * v)
        if a.op == "F":
            x = (idx_mb[a.microbatch] if source is None
                 else receive("F", a.microbatch, a.chunk, source).requires_grad_())
            t0 = time.perf_counter()
            out = stage_module(x, targets_mb[a.microbatch] if target is None else None)
            if target is None:
                out = out / m                  # mean over micro-batches = the whole batch's mean
                losses.append(out.detach())
            if cost is not None:
                cost.spend("F", stage_module.num_layers)
            events.append((a, t0, time.perf_counter()))
            held[(a.microbatch, a.chunk)] = (x, out)
            peak = max(peak, len(held))
            if target is not None:
                deliver(out, "F", a.microbatch, target)
        else:
            x, out = held.pop((a.microbatch, a.chunk))
            grad = None if source is None else receive("B", a.microbatch, a.chunk, source)
            t0 = time.perf_counter()
            torch.autograd.backward(out, grad)
            if cost is not None:
                cost.spend("B", stage_module.num_layers)
            events.append((a, t0, time.perf_counter()))
            if target is not None:
                deliver(x.grad, "B", a.microbatch, target)
    for work in sends:
        work.wait()
    loss = float(torch.stack(losses).sum()) if losses else None
    return StepRecord(loss, events, start, peak)


@torch.no_grad()
def pipeline_forward(stages, ctx, idx, targets=None, owner=stage_owner):
    """Forward only (evaluation): the whole batch idx (B, T) walks through the virtual stages in
    order, blocking send/recv between ranks. Returns the loss (with targets) or the logits on the
    rank holding the last stage, None on the others. `owner(stage, p)` -> (rank,
    chunk) places the stages (zero_bubble_runtime.zb_owner for ZB-V)."""
    p = ctx.pp_size
    num_virtual = p * len(stages)
    shape, dtype = (*idx.shape, stages[0].n_embd), activation_dtype(stages)   # (B, T, C)
    x, result = idx, None
    for stage in range(num_virtual):
        rank, chunk = owner(stage, p)
        if rank != ctx.pp_rank:
            continue
        source, target = message_route("F", stage, num_virtual)
        if source is not None and owner(source, p)[0] != rank:
            x = comm.recv(shape, dtype, ctx.pp_ranks[owner(source, p)[0]], ctx, "forward")
        out = stages[chunk](x, targets if target is None else None)
        if target is None:
            result = out
        elif owner(target, p)[0] != rank:
            comm.send(out, ctx.pp_ranks[owner(target, p)[0]], ctx, "forward")
        x = out
    return result


def sync_tied_grads(stages, ctx, grad_of=None) -> None:
    """Sum the gradients of the tied embedding / output weight between the first and last stage.

    wte (first stage, rank 0) and lm_head (last stage, rank p-1) are one weight in the serial
    model; here they are two copies, so each gets the sum of both gradients (Megatron's
    embedding-group all-reduce), and equal gradients keep the copies equal under any optimizer.
    grad_of(weight): the tensor that holds its gradient (default: .grad; ZeRO-2: its piece).
    """
    if ctx.pp_size == 1 or not (ctx.is_first_stage or ctx.is_last_stage):
        return
    weight = tied_weight(stages, ctx)
    grad = weight.grad if grad_of is None else grad_of(weight)
    peer = ctx.pp_ranks[-1] if ctx.is_first_stage else ctx.pp_ranks[0]
    grad.add_(comm.exchange(grad, peer, ctx, phase="backward"))


def tied_weight(stages, ctx) -> nn.Parameter:
    """This rank's copy of the tied embedding / output weight (first or last pipeline stage)."""
    return stages[0].transformer.wte.weight if ctx.is_first_stage else stages[-1].lm_head.weight


def mark_tied_copy(stages, ctx) -> None:
    """On the last pipeline stage (pp > 1), mark its copy of the tied weight
    `pipeline_duplicate = True`: the first stage counts it in the gradient norm
    (minimt.parallel.grads.counts_in_norm)."""
    if ctx.pp_size > 1 and ctx.is_last_stage:
        tied_weight(stages, ctx).pipeline_duplicate = True


def timeline_from_records(records) -> Timeline:
    """One Timeline from the pipeline ranks' StepRecords (pp-rank order); 0 = the first start."""
    origin = min(r.start for r in records)
    events = [[(a, s - origin, e - origin) for a, s, e in r.events] for r in records]
    return Timeline(events, start=0.0)
