"""Data parallelism: every rank of the "dp" group holds a replica and reads its own slice of the
global batch; the gradients are averaged, so every replica takes the step the serial model would
take on the whole batch (Li et al. 2020, arXiv 2006.15704, describe PyTorch's DDP).

`DistributedDataParallel` averages the gradients with all-reduces of buckets of ~bucket_size_mb,
launched from backward hooks as soon as every gradient of a bucket is ready, so communication
overlaps the rest of the backward. Buckets hold the parameters in reverse order (the order the
backward produces their gradients) and are launched in that order on every rank. ZeRO-1, the
sharded optimizer that synchronises the gradients itself, is `DistributedOptimizer` (zero.py).
"""
from __future__ import annotations

import contextlib
import json
import time
import zlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .comm import all_gather, all_reduce_async, broadcast
from .context import ParallelContext, check_ctx


def unique_parameters(module) -> list[nn.Parameter]:
    """Trainable parameters of a module or a list of modules (pipeline chunks), each once."""
    modules = module if isinstance(module, (list, tuple)) else [module]
    unique = {}
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                unique.setdefault(id(p), p)
    return list(unique.values())


@dataclass
class Bucket:
    """Parameters whose gradients travel in one all-reduce."""
    params: list[nn.Parameter]
    numel: int
    pending: int = 0                         # gradients not ready yet in this backward
    flat: torch.Tensor | None = None         # (numel,) the gradients being reduced
    work: object = None                      # the async all-reduce's handle
    times: dict = field(default_factory=dict)  # "launch", "done": time.perf_counter() seconds


class DistributedDataParallel(nn.Module):
    """Wraps a replica: call it like the module; backward() leaves every gradient averaged over
    the "dp" group. Replicas start equal: dp rank 0's parameters are broadcast when wrapping.

    bucket_size_mb: gradients are sent in buckets of about this many MiB (at least one
    parameter each). `with ddp.no_sync():` accumulates local gradients without communication
    (gradient accumulation: sync only on the last micro-batch). After a backward,
    `self.timeline` holds when each gradient became ready and when each bucket was sent and done.
    """

    def __init__(self, module, ctx: ParallelContext, bucket_size_mb: float = 25.0):
        super().__init__()
        check_ctx(ctx, "DistributedDataParallel")
        if isinstance(bucket_size_mb, bool) or not isinstance(bucket_size_mb, (int, float)) \
                or not bucket_size_mb > 0:
            raise ValueError(f"bucket_size_mb={bucket_size_mb!r} must be a positive number of MiB "
                             f"(25 is PyTorch's)")
        if any(isinstance(m, DistributedDataParallel)
               for m in (module if isinstance(module, (list, tuple)) else [module])):
            raise ValueError("the module is already a DistributedDataParallel: wrap the model once "
                             "(wrapping twice averages every gradient twice)")
        self.module = nn.ModuleList(module) if isinstance(module, (list, tuple)) else module
        self.ctx, self.bucket_size_mb = ctx, bucket_size_mb
        self.params = unique_parameters(module)
        self._broadcast_state()
        self.buckets = self._make_buckets(bucket_size_mb * 2 ** 20)
        self._bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b.params}
        self.require_sync = True
        self._next_bucket = 0        # buckets are launched strictly in order
        self._finish_queued = False
        self.timeline = {"ready": [], "buckets": []}
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._on_grad_ready)
        self._reset()

    @torch.no_grad()
    def _broadcast_state(self) -> None:
        """Make the replicas equal, as PyTorch's DDP does: dp rank 0's parameters (frozen ones
        too) and buffers go to every replica, after checking that their shapes agree."""
        named = {}
        for name, t in [*self.module.named_parameters(), *self.module.named_buffers()]:
            named.setdefault(id(t), (name, t))
        tensors = {key: t for key, (_, t) in named.items()}
        shapes = [(tuple(t.shape), str(t.dtype)) for t in tensors.values()]
        mine = torch.tensor([len(shapes), zlib.crc32(repr(shapes).encode())])
        every = all_gather(mine, self.ctx, "dp", dim=0).view(-1, 2)  # (dp, 2)
        differ = [r for r in range(len(every)) if not torch.equal(every[r], every[0])]
        if differ:  # every rank sees it: the detailed lists travel only now
            described = [(name, *shape) for (name, _), shape in zip(named.values(), shapes)]
            raise ValueError(f"the replicas differ: {self._first_difference(described, differ)}; "
                             f"build every replica from the same config before wrapping it in "
                             f"DistributedDataParallel")
        for t in tensors.values():
            broadcast(t.data, self.ctx, "dp")

    def _first_difference(self, described: list[tuple], differ: list[int]) -> str:
        """Gather every replica's [(name, shape, dtype)] and say where the first that differs
        from dp rank 0 does."""
        data = torch.tensor(list(json.dumps(described).encode()), dtype=torch.uint8)  # (bytes,)
        lengths = all_gather(torch.tensor([data.numel()]), self.ctx, "dp", dim=0)  # (dp,)
        padded = torch.zeros(int(lengths.max()), dtype=torch.uint8)
        padded[:data.numel()] = data
        rows = all_gather(padded, self.ctx, "dp", dim=0).view(len(lengths), -1)  # (dp, max)
        lists = [json.loads(bytes(row[:n].tolist())) for row, n in zip(rows, lengths.tolist())]
        first, rank = lists[0], differ[0]
        other = lists[rank]
        for ours, theirs in zip(first, other):
            if ours != theirs:
                break
        else:
            ours, theirs = (first[len(other)] if len(first) > len(other) else None,
                            other[len(first)] if len(other) > len(first) else None)
        where = (lambda t: "nothing there" if t is None else
                 f"{t[0]} of shape {tuple(t[1])} and {t[2]}")
        return (f"data-parallel rank(s) {differ} hold other parameters or buffers than rank 0: "
                f"first {where(ours)} on rank 0, {where(theirs)} on rank {rank} "
                f"({len(first)} tensors on rank 0, {len(other)} on rank {rank})")

    def _make_buckets(self, capacity_bytes: float) -> list[Bucket]:
        """Consecutive parameters in reverse order, a new bucket when full or the dtype changes."""
        buckets, current, size = [], [], 0
        for p in reversed(self.params):
            nbytes = p.numel() * p.element_size()
            if current and (size + nbytes > capacity_bytes or p.dtype != current[0].dtype):
                buckets.append(Bucket(current, sum(q.numel() for q in current)))
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            buckets.append(Bucket(current, sum(q.numel() for q in current)))
        return buckets

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate local gradients and send nothing."""
        previous, self.require_sync = self.require_sync, False
        try:
            yield
        finally:
            self.require_sync = previous

    def _reset(self) -> None:
        for bucket in self.buckets:
            bucket.pending, bucket.flat, bucket.work = len(bucket.params), None, None
        self._next_bucket, self._finish_queued = 0, False

    def _launch(self, bucket: Bucket) -> None:
        """Copy the bucket's gradients into one flat tensor, divide by dp, start the all-reduce."""
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in bucket.params]
        bucket.flat = torch.cat([g.flatten() for g in grads]).div_(self.ctx.dp_size)  # (numel,)
        bucket.times = {"launch": time.perf_counter()}
        bucket.work = all_reduce_async(bucket.flat, self.ctx, "dp", phase="backward")
        if bucket.work is not None:
            times = bucket.times
            bucket.work.get_future().then(lambda _: times.setdefault("done", time.perf_counter()))

    def _on_grad_ready(self, param: nn.Parameter) -> None:
        """Backward hook: `param.grad` is complete for this backward. When its bucket is full,
        launch it, and every later bucket that is full too, in bucket order."""
        if not self.require_sync:
            return
        if not self._finish_queued:  # run _finish once the whole backward is done
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self._finish_queued = True
        self.timeline["ready"].append(time.perf_counter())
        ### BEGIN SOLUTION
        self.buckets[self._bucket_of[id(param)]].pending -= 1
        while (self._next_bucket < len(self.buckets)
               and self.buckets[self._next_bucket].pending == 0):
            self._launch(self.buckets[self._next_bucket])
            self._next_bucket += 1
        ### END SOLUTION

    def _finish(self) -> None:
        """End of backward: launch what is left (parameters unused in this forward count as
        zero), wait for every bucket and write the averaged gradients back."""
        for bucket in self.buckets[self._next_bucket:]:
            self._launch(bucket)
        for bucket in self.buckets:
            if bucket.work is not None:
                bucket.work.wait()
            bucket.times.setdefault("done", time.perf_counter())
            offset = 0
            for p in bucket.params:
                grad = bucket.flat[offset:offset + p.numel()].view_as(p)
                p.grad = grad if p.grad is None else p.grad.copy_(grad)
                offset += p.numel()
            self.timeline["buckets"].append((bucket.numel * bucket.flat.element_size(),
                                             bucket.times["launch"], bucket.times["done"]))
        self._reset()

    def sync_gradients(self) -> None:
        """Average the gradients now, bucket by bucket: for backward passes run under no_sync()
        (e.g. by a pipeline schedule), once they are all done."""
        if not self.require_sync:
            raise RuntimeError("sync_gradients() inside no_sync(): call it after the block")
        self._finish()

    def clear_timeline(self) -> None:
        """Forget the recorded times (before the backward you want to look at)."""
        self.timeline = {"ready": [], "buckets": []}
