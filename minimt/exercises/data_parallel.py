"""Tasks of 07_data_parallel_3d, checked on real gloo ranks against independent oracles:
07.1 the ring reduce-scatter (torch.distributed.all_reduce, and the ring's (n-1)/n bytes);
07.2 the bucketed all-reduce hook of DistributedDataParallel (autograd on the serial model and
the global batch; buckets launched during the backward); 07.3 the ZeRO-1 step
(torch.optim.AdamW on the serial model). And a notebook exercise, `check_ddp_group_bytes`: the
bytes each group carries per step with DDP, against the CommCounter on a real run."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from .core import ExerciseError, Task, call, compare, needs_tasks, rank_stub_message, unfinished


def _launch(task_id: str, fn, *args, **sizes):
    """launch(fn, *args, **sizes); a stub's NotImplementedError on a rank says what to write and
    where, as every task does."""
    from ..parallel import launch
    try:
        return launch(fn, *args, timeout_s=30, **sizes)
    except Exception as err:
        message = None if isinstance(err, ExerciseError) else rank_stub_message(err)
        if message is None:
            raise
        task = next(t for t in TASKS if t.id == task_id)
        raise unfinished(task.id, task.statement, task.target, task.section, message) from None


# ---------------------------------------------------------------------------- 07.1 ring reduce-scatter
def _ring_rank(ctx, k):
    from ..parallel import CommCounter
    from ..parallel.ring import ring_reduce_scatter                 # the learner's, imported now
    x = torch.randn(ctx.dp_size * k, generator=torch.Generator().manual_seed(ctx.dp_rank))
    with CommCounter() as counter:
        got = ring_reduce_scatter(x, ctx, "dp")
    total = x.clone()
    dist.all_reduce(total, group=ctx.dp_group)                      # the oracle: torch's collective
    return got, total, x, counter.bytes(kind="send", group="dp")


def _check_ring_reduce_scatter() -> None:
    """On 2, 3 and 4 ranks: chunk r of the sum over ranks on rank r, and (n-1)/n of the tensor's
    bytes sent by each rank."""
    k = 5
    for n in (2, 3, 4):
        results = _launch("07.1", _ring_rank, k, dp=n)
        for rank, (got, total, mine, sent) in enumerate(results):
            name = f"task 07.1, n={n} ranks, rank {rank} (tensor of {n * k} floats)"
            if not isinstance(got, torch.Tensor) or got.shape != (k,):
                raise ExerciseError(f"{name}: expected this rank's chunk, a tensor of shape ({k},), "
                                    f"got {getattr(got, 'shape', type(got).__name__)}")
            expected = total.chunk(n)[rank]
            if not torch.allclose(got, expected, atol=1e-5):
                other = [c for c in range(n) if torch.allclose(got, total.chunk(n)[c], atol=1e-5)]
                hint = (f"you return chunk {other[0]} of the sum: at step s send chunk "
                        f"(r - s - 1) mod n and receive chunk (r - s - 2) mod n, so the last "
                        f"chunk completed is r" if other else
                        "add each received chunk into your own copy of that chunk"
                        if not torch.allclose(got, mine.chunk(n)[rank]) else
                        "this is your own chunk, unreduced: run n-1 steps of send + receive + add")
                error = (got - expected).abs().max().item()
                raise ExerciseError(f"{name}: got {got.tolist()}, expected chunk {rank} of the sum "
                                    f"{expected.tolist()} (largest error {error:.3g}). Hint: {hint}")
            expected_bytes = (n - 1) * k * 4
            if sent != expected_bytes:
                raise ExerciseError(f"{name}: sent {sent} bytes through comm, the ring sends "
                                    f"(n-1)/n of the tensor = {expected_bytes}. Hint: one chunk "
                                    f"per step, n-1 steps, with comm.isend (group='dp')")
    print("task 07.1: ring_reduce_scatter equals torch's all-reduce chunk by chunk on 2, 3 and 4 "
          "ranks, sending (n-1)/n of the tensor")


# ---------------------------------------------------------------------------- 07.2 the DDP hook
def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3))


class _Shuffled(nn.Module):
    """The same MLP with its layers registered in the order second, first, last: the buckets
    (reverse registration order) become ready out of order during the backward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        first, second, last = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.second, self.first, self.last = second, first, last

    def forward(self, x):                                             # (B, 6) -> (B, 3)
        return self.last(torch.tanh(self.second(torch.tanh(self.first(x)))))


MODELS = {"an MLP": _mlp, "an MLP whose layers are registered out of order": _Shuffled}


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


def _ddp_rank(ctx):
    from ..parallel import CommCounter, DistributedDataParallel
    out = {}
    for label, make in MODELS.items():
        ddp = DistributedDataParallel(make(), ctx, bucket_size_mb=0.0005)  # ~500 bytes: 4+ buckets
        waiting = []

        def after_hook(param):  # runs after the learner's hook: no full bucket may wait
            k = ddp._next_bucket
            if k < len(ddp.buckets) and ddp.buckets[k].pending == 0:
                waiting.append(k)
        for p in ddp.params:
            p.register_post_accumulate_grad_hook(after_hook)
        x, y = (t.chunk(ctx.dp_size)[ctx.dp_rank] for t in _data())
        with CommCounter() as counter:
            ((ddp(x) - y) ** 2).mean().backward()
        grads = [p.grad for p in ddp.module.parameters()]
        out[label] = (grads, ddp.timeline, len(ddp.buckets),
                      counter.count(kind="all_reduce", group="dp"), waiting)
    return out


def _check_ddp_hook() -> None:
    """On 2 ranks, each with half the batch: the averaged gradients equal the serial model's on
    the whole batch; one all-reduce per bucket, the first launched before the backward ends, the
    buckets launched strictly in bucket order (also when they become ready out of order)."""
    results = _launch("07.2", _ddp_rank, dp=2)
    for label, make in MODELS.items():
        model = make()
        x, y = _data()
        ((model(x) - y) ** 2).mean().backward()                     # the oracle: serial autograd
        expected = [p.grad for p in model.parameters()]
        for rank, by_model in enumerate(results):
            grads, timeline, num_buckets, num_reduces, waiting = by_model[label]
            name = f"task 07.2, rank {rank} of 2, {label} in {num_buckets} buckets"
            for i, (got, want) in enumerate(zip(grads, expected)):
                compare(f"{name}: gradient of parameter {i}", got, want, atol=1e-6)
            if num_reduces != num_buckets:
                raise ExerciseError(f"{name}: {num_reduces} all-reduces, expected one per bucket "
                                    f"({num_buckets}). Hint: launch each bucket once, when its "
                                    f"pending count reaches 0")
            launches = [start for _, start, _ in timeline["buckets"]]
            if not launches or launches[0] >= max(timeline["ready"]):
                raise ExerciseError(f"{name}: the first bucket was launched after the last gradient "
                                    f"was ready: no overlap. Hint: in the hook, count the bucket's "
                                    f"gradient down and launch every ready bucket, in order, now")
            late = next((i for i in range(1, len(launches)) if launches[i] < launches[i - 1]), None)
            if late is not None:
                raise ExerciseError(f"{name}: bucket {late} was launched before bucket {late - 1}: "
                                    f"out of order. Hint: launch strictly in bucket order: while "
                                    f"the bucket at self._next_bucket has no pending gradient, "
                                    f"launch it and move on (every rank must issue its "
                                    f"all-reduces in the same order)")
            if waiting:
                raise ExerciseError(f"{name}: after a gradient arrived, bucket {waiting[0]} was "
                                    f"complete (pending 0) but not launched. Hint: launch EVERY "
                                    f"ready bucket from self._next_bucket on, in order (a loop), "
                                    f"not only one per call")
    print("task 07.2: bucketed gradients equal the serial model's on the global batch; one "
          "all-reduce per bucket, launched in order during the backward")


# ---------------------------------------------------------------------------- 07.3 the ZeRO-1 step
def _zero_rank(ctx, steps, lr, clip):
    from ..parallel import CommCounter, DistributedOptimizer
    model = _mlp()
    opt = DistributedOptimizer(model, ctx, lr=lr, weight_decay=0.1, grad_clip=clip)
    unscale_and_clip, shards = opt.unscale_and_clip, []

    def spy(grad):  # the reduce-scattered gradient shard, before clipping
        shards.append(grad.detach().clone())
        return unscale_and_clip(grad)
    opt.unscale_and_clip = spy
    x, y = (t.chunk(ctx.dp_size)[ctx.dp_rank] for t in _data())
    with CommCounter() as counter:
        for _ in range(steps):
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
            opt.zero_grad()
    kinds = [(r.kind, r.numel, r.phase) for r in counter.records  # the clipping's norm aside
             if r.kind in ("reduce_scatter", "all_gather", "all_reduce") and r.numel > 1]
    return ([p.detach() for p in model.parameters()], kinds, opt.shard_size, opt.shard_start,
            shards[:1])


def _check_zero_step() -> None:
    """On 2 ranks: the reduce-scatter gives this rank's shard of the gradient averaged over dp
    (the serial model's on the whole batch); after 3 clipped steps the parameters equal
    torch.optim.AdamW's on the serial model with clip_grad_norm_ (1e-6), with one reduce-scatter
    and one all-gather per step, phase "optimizer"."""
    steps, lr, clip = 3, 1e-3, 0.05
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)  # the oracle
    x, y = _data()
    first_grad = None
    for _ in range(steps):
        ((model(x) - y) ** 2).mean().backward()
        if first_grad is None:
            first_grad = torch.cat([p.grad.flatten() for p in model.parameters()])  # (N,)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()
    results = _launch("07.3", _zero_rank, steps, lr, clip, dp=2)
    for rank, (params, kinds, shard, start, shards) in enumerate(results):
        name = f"task 07.3, rank {rank} of 2, {steps} AdamW steps"
        expected_kinds = [("reduce_scatter", 2 * shard, "optimizer"),
                          ("all_gather", 2 * shard, "optimizer")] * steps
        if [k[:2] for k in kinds] != [k[:2] for k in expected_kinds]:
            used = sorted({kind for kind, _, _ in kinds})
            raise ExerciseError(f"{name}: the step communicated {used or 'nothing'} "
                                f"({len(kinds)} ops); ZeRO-1 does one reduce-scatter of the flat "
                                f"gradients and one all-gather of the flat parameters per step. "
                                f"Hint: reduce_scatter(flat_grads / dp) -> adamw_update -> "
                                f"all_gather(master)")
        if kinds != expected_kinds:
            phases = sorted({str(phase) for _, _, phase in kinds})
            raise ExerciseError(f"{name}: the step's collectives are counted under phase "
                                f"{', '.join(phases)}. Hint: pass phase=\"optimizer\" to "
                                f"reduce_scatter and all_gather, so the CommCounter files the "
                                f"optimizer's bytes apart from the forward and backward")
        expected_shard = torch.nn.functional.pad(first_grad, (0, 2 * shard - first_grad.numel()))
        expected_shard = expected_shard[start:start + shard]
        if not shards:
            raise ExerciseError(f"{name}: unscale_and_clip was never called: the loss scaler and "
                                f"the gradient clipping (grad_clip={clip}) were skipped. Hint: "
                                f"after the reduce-scatter, `if not self.unscale_and_clip(grad): "
                                f"return False`")
        if shards:
            got = shards[0]
            if got.shape == expected_shard.shape and torch.allclose(got, 2 * expected_shard,
                                                                    atol=1e-6):
                raise ExerciseError(f"{name}: AdamW got the SUM of the 2 ranks' gradients "
                                    f"(twice the serial gradient). Hint: divide the flat gradients "
                                    f"by dp before the reduce-scatter: the average is the "
                                    f"gradient of the whole batch's mean loss")
            compare(f"{name}: the reduce-scattered gradient shard at step 1 (elements "
                    f"{start}..{start + shard - 1} of the flat gradient averaged over dp)", got,
                    expected_shard, atol=1e-6, rtol=1e-5)
        for i, (got, want) in enumerate(zip(params, model.parameters())):
            compare(f"{name}: parameter {i}", got, want.detach(), atol=1e-6, rtol=0)
    print("task 07.3: ZeRO-1 equals torch.optim.AdamW (with clipping) on the serial model after 3 "
          "steps; the shard is the dp-averaged gradient; one reduce-scatter and one all-gather per "
          "step, phase 'optimizer'")


# ---------------------------------------------------------------------------- exercise: bytes per group
def _ddp_bytes_rank(ctx, config, batch_size):
    """The bytes one rank hands to the tp and dp groups in a forward and backward of a
    tensor-parallel GPT wrapped in DistributedDataParallel, counted by the CommCounter."""
    from ..model import GPT
    from ..parallel import CommCounter, DistributedDataParallel, apply_tensor_parallel
    torch.manual_seed(0)
    model = DistributedDataParallel(apply_tensor_parallel(GPT(config), ctx), ctx)
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size))
    x = x.chunk(ctx.dp_size)[ctx.dp_rank]
    with CommCounter() as counter:
        model(x, x)[1].backward()
    return {"tp": counter.bytes(group="tp"), "dp": counter.bytes(group="dp")}


@needs_tasks
def check_ddp_group_bytes(fn) -> None:
    """fn(config, tp, dp, batch_size) -> dict {"tp": int, "dp": int} of bytes: what one rank hands to each
    group's collectives in one training step of a GPT (fp32, no pipeline, one micro-batch of
    batch_size / dp sequences of config.block_size tokens, DistributedDataParallel's all-reduce
    of the gradients, no ZeRO), measured by the CommCounter on real processes."""
    from ..config import GPTConfig
    from ..parallel import launch
    config = GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=4, n_embd=16)
    for i, (tp, dp, batch) in enumerate([(2, 1, 4), (1, 2, 4), (2, 2, 8), (4, 1, 2)]):
        measured = launch(_ddp_bytes_rank, config, batch, tp=tp, dp=dp, timeout_s=30)[0]
        got = call("check_ddp_group_bytes", fn, config, tp, dp, batch)
        name = f"check_ddp_group_bytes, case {i + 1} (tp={tp}, dp={dp}, batch {batch}, {config})"
        if not isinstance(got, dict) or set(got) != {"tp", "dp"}:
            raise ExerciseError(f"{name}: return a dict with the keys 'tp' and 'dp', got {got!r}")
        b = batch // dp
        hints = {"tp": f"per block 2 all-reduces of (b, T, C) forward and 2 backward, one for the "
                       f"embedding, one for the output layer and 3 of (b, T) in the loss; here "
                       f"b = batch / dp = {b}",
                 "dp": "DDP all-reduces every gradient of the rank's share of the model once, 4 "
                       "bytes each; no padding and no all-gather (that is ZeRO-1's accounting)"}
        for group in ("tp", "dp"):
            if got[group] != measured[group]:
                raise ExerciseError(f"{name}: {group} bytes {got[group]}, measured "
                                    f"{measured[group]}. Hint: {hints[group]}")
    print("check_ddp_group_bytes: the tp and dp bytes equal the CommCounter's in all 4 layouts")


TASKS = [
    Task("07.1", 3, "write ring_reduce_scatter: n-1 steps of send a chunk right, add the one from "
         "the left", "minimt.parallel.ring:ring_reduce_scatter", "notebook 07, section 1",
         _check_ring_reduce_scatter),
    Task("07.2", 3, "write DistributedDataParallel._on_grad_ready: count a bucket down and launch "
         "every ready bucket in order", "minimt.parallel.data_parallel:"
         "DistributedDataParallel._on_grad_ready", "notebook 07, section 2", _check_ddp_hook),
    Task("07.3", 3, "write DistributedOptimizer.step: reduce-scatter the flat gradients divided "
         "by dp, AdamW on your shard, all-gather (both collectives with phase='optimizer')",
         "minimt.parallel.zero:DistributedOptimizer.step", "notebook 07, section 3",
         _check_zero_step),
]
