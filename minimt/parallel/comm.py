"""Communication for model parallelism, all counted.

- Plain collectives (`all_reduce`, `all_gather`, `reduce_scatter`, `reduce_scatter_along`,
  `broadcast`): gradient sync, ZeRO's sharded optimizer, the max of a vocab-parallel cross
  entropy, and the autograd mappings f, g, ... of tensor and sequence parallelism (mappings.py);
  `ring_bytes_per_rank` says how many bytes each rank sends for one of them in the ring algorithm.
- Point-to-point ops between pipeline stages (`send_forward`, `recv_forward`, ...).
- `CommCounter`: every op above that communicates is recorded in every active counter of this
  process (kind, group, elements, bytes, forward/backward), so tests can assert e.g. "a
  transformer layer's forward does exactly 2 all-reduces of B*T*C elements".
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .context import ParallelContext, divide


# ---------------------------------------------------------------------------- the counter
@dataclass(frozen=True)
class CommRecord:
    """One communication op as seen by this rank."""
    kind: str          # "all_reduce", "all_gather", "reduce_scatter", "broadcast", "send", "recv"
    group: str         # "tp", "pp", "dp" or "world"
    numel: int         # elements of the whole tensor: the reduced one (before a reduce-scatter),
                       # the gathered result, the broadcast tensor, the message
    bytes: int         # numel * element size
    phase: str | None  # "forward", "backward", or None when the caller did not say


_ACTIVE_COUNTERS: list["CommCounter"] = []  # per process; a forked rank starts with its own copy


class CommCounter:
    """Records the communication issued through this module while it is active.

    with CommCounter() as counter:
        loss = model(x).sum(); loss.backward()
    counter.count(kind="all_reduce", group="tp", phase="forward")  # -> 2
    print(counter.summary())
    Filters are optional and combine: kind, group, phase. Ops on a group of size 1 are not
    communication, so they are not recorded.
    """

    def __init__(self):
        self.records: list[CommRecord] = []

    def __enter__(self) -> "CommCounter":
        _ACTIVE_COUNTERS.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        _ACTIVE_COUNTERS.remove(self)

    def select(self, kind: str | None = None, group: str | None = None,
               phase: str | None = None) -> list[CommRecord]:
        """The records matching every filter given."""
        return [r for r in self.records if (kind is None or r.kind == kind)
                and (group is None or r.group == group) and (phase is None or r.phase == phase)]

    def count(self, kind=None, group=None, phase=None) -> int:
        """Number of ops matching the filters."""
        return len(self.select(kind, group, phase))

    def numel(self, kind=None, group=None, phase=None) -> int:
        """Total elements of the ops matching the filters."""
        return sum(r.numel for r in self.select(kind, group, phase))

    def bytes(self, kind=None, group=None, phase=None) -> int:
        """Total bytes of the ops matching the filters."""
        return sum(r.bytes for r in self.select(kind, group, phase))

    def ring_bytes_per_rank(self, ctx: ParallelContext, kind=None, group=None, phase=None) -> float:
        """Bytes each rank sends for the matching collectives if each runs the ring algorithm
        (`ring_bytes_per_rank` of every record, with its group's size from `ctx`)."""
        return sum(ring_bytes_per_rank(r.kind, r.bytes, ctx.size(r.group))
                   for r in self.select(kind, group, phase))

    def reset(self) -> None:
        self.records.clear()

    def summary(self) -> str:
        """A table: one line per (group, kind, phase) with calls, elements and bytes."""
        calls, elements, nbytes = Counter(), Counter(), Counter()
        for r in self.records:
            key = (r.group, r.kind, r.phase or "-")
            calls[key] += 1
            elements[key] += r.numel
            nbytes[key] += r.bytes
        lines = [f"{'group':<6}{'kind':<16}{'phase':<10}{'calls':>7}{'elements':>12}{'bytes':>13}"]
        for key in sorted(calls):
            lines.append(f"{key[0]:<6}{key[1]:<16}{key[2]:<10}{calls[key]:>7}"
                         f"{elements[key]:>12}{nbytes[key]:>13}")
        return "\n".join(lines)


def _record(kind: str, group: str, tensor: torch.Tensor, phase: str | None,
            numel: int | None = None) -> None:
    numel = tensor.numel() if numel is None else numel
    for counter in _ACTIVE_COUNTERS:
        counter.records.append(CommRecord(kind, group, numel, numel * tensor.element_size(), phase))


# ---------------------------------------------------------------------------- plain collectives
def all_reduce(tensor: torch.Tensor, ctx: ParallelContext, group: str,
               op=dist.ReduceOp.SUM, phase: str | None = None) -> torch.Tensor:
    """In-place all-reduce over the named group ("tp", "pp", "dp", "world"), like
    torch.distributed.all_reduce; returns `tensor`. Nothing happens on a group of size 1."""
    if ctx.size(group) == 1:
        return tensor
    _record("all_reduce", group, tensor, phase)
    dist.all_reduce(tensor, op=op, group=ctx.group(group))
    return tensor


def all_reduce_async(tensor: torch.Tensor, ctx: ParallelContext, group: str,
                     phase: str | None = None):
    """Start an in-place sum all-reduce and return its work handle (call .wait() before reading
    `tensor`), or None on a group of size 1. Lets computation overlap the communication."""
    if ctx.size(group) == 1:
        return None
    _record("all_reduce", group, tensor, phase)
    return dist.all_reduce(tensor, group=ctx.group(group), async_op=True)


def reduce_scatter(tensor: torch.Tensor, ctx: ParallelContext, group: str,
                   op=dist.ReduceOp.SUM, phase: str | None = None) -> torch.Tensor:
    """Reduce `tensor` over the group and return this rank's 1/n chunk along dim 0 (a new tensor):
    (n*k, ...) -> (k, ...), chunk r on group rank r. The first half of an all-reduce."""
    size = ctx.size(group)
    if size == 1:
        return tensor
    tensor = tensor.contiguous()
    rows = divide(tensor.shape[0], size, "dimension 0 of a reduce-scatter", f"the {group} size")
    out = torch.empty((rows, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    _record("reduce_scatter", group, tensor, phase)
    dist.reduce_scatter_single(out, tensor, op=op, group=ctx.group(group))
    return out


def broadcast(tensor: torch.Tensor, ctx: ParallelContext, group: str, src: int = 0,
              phase: str | None = None) -> torch.Tensor:
    """In place: every rank's `tensor` becomes group rank `src`'s; returns `tensor`."""
    if ctx.size(group) == 1:
        return tensor
    _record("broadcast", group, tensor, phase)
    ranks = list(range(ctx.world_size)) if group == "world" else getattr(ctx, f"{group}_ranks")
    dist.broadcast(tensor, ranks[src], group=ctx.group(group))
    return tensor


def barrier(ctx: ParallelContext, group: str = "world") -> None:
    """Wait until every rank of the group got here (no data: nothing is recorded)."""
    if ctx.size(group) > 1:
        dist.barrier(group=ctx.group(group))


def ring_bytes_per_rank(kind: str, nbytes: float, n: int) -> float:
    """Bytes one rank sends for a collective over n ranks on a tensor of `nbytes` (the whole one)
    in the ring algorithm: a reduce-scatter or an all-gather passes n-1 chunks of nbytes/n around
    the ring, an all-reduce does both: 2(n-1)/n * nbytes (Patarasuk & Yuan 2009)."""
    halves = {"reduce_scatter": 1, "all_gather": 1, "all_reduce": 2}
    if kind not in halves:
        raise ValueError(f"kind={kind!r}: the ring formula covers {sorted(halves)}")
    return halves[kind] * (n - 1) / n * nbytes


def all_gather(tensor: torch.Tensor, ctx: ParallelContext, group: str, dim: int = -1,
               phase: str | None = None) -> torch.Tensor:
    """Concatenate every rank's `tensor` along `dim`, in group-rank order (a new tensor):
    (..., n) -> (..., size * n) for dim=-1."""
    return all_gather_start(tensor, ctx, group, dim, phase).wait()


class PendingCollective:
    """A collective started with async_op=True: `wait()` returns its result (once)."""

    def __init__(self, work, finish):
        self._work, self._finish = work, finish

    def wait(self) -> torch.Tensor:
        if self._work is not None:
            self._work.wait()
        return self._finish()


def all_gather_start(tensor: torch.Tensor, ctx: ParallelContext, group: str, dim: int = -1,
                     phase: str | None = None) -> PendingCollective:
    """Start `all_gather` and return at once, so computation overlaps the communication."""
    size = ctx.size(group)
    if size == 1:
        return PendingCollective(None, lambda: tensor)
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(size)]
    _record("all_gather", group, tensor, phase, numel=tensor.numel() * size)
    work = dist.all_gather(parts, tensor, group=ctx.group(group), async_op=True)
    return PendingCollective(work, lambda: torch.cat(parts, dim=dim))


def reduce_scatter_along_start(tensor: torch.Tensor, ctx: ParallelContext, group: str, dim: int,
                               phase: str | None = None) -> PendingCollective:
    """Start `reduce_scatter_along` and return at once (wait() gives this rank's slice)."""
    size = ctx.size(group)
    if size == 1:
        return PendingCollective(None, lambda: tensor)
    chunk = divide(tensor.size(dim), size, f"sequence length (dimension {dim})",
                   f"{group} size (sequence parallelism splits the tokens)")
    parts = [part.contiguous() for part in tensor.split(chunk, dim=dim)]
    out = torch.empty_like(parts[0])
    _record("reduce_scatter", group, tensor, phase)
    work = dist.reduce_scatter(out, parts, group=ctx.group(group), async_op=True)
    return PendingCollective(work, lambda: out)


def reduce_scatter_along(tensor: torch.Tensor, ctx: ParallelContext, group: str, dim: int,
                         phase: str | None = None) -> torch.Tensor:
    """Sum `tensor` over the group and keep this rank's 1/size slice of `dim` (a new tensor),
    recorded as "reduce_scatter" with the elements of the whole tensor, like an all-reduce:
    (..., n, ...) -> (..., n / size, ...)."""
    return reduce_scatter_along_start(tensor, ctx, group, dim, phase).wait()


def ring_bytes_of_records(records, group_size: int) -> float:
    """Bytes each rank sends for these recorded collectives with ring algorithms on a group of
    `group_size` (`ring_bytes_per_rank` of each). Compares plain and sequence-parallel tensor
    parallelism on equal terms."""
    return sum(ring_bytes_per_rank(r.kind, r.bytes, group_size) for r in records)


# ---------------------------------------------------------------------------- point to point
# Messages between pipeline stages use global ranks (ctx.next_rank / ctx.prev_rank) and are
# recorded with group "pp". A blocking send waits for the matching recv, so two neighbours that
# both send first deadlock: use isend, or the paired ops below, when a stage sends and receives.
def send(tensor: torch.Tensor, dst: int, ctx: ParallelContext, phase: str | None = None,
         tag: int = 0, group: str = "pp") -> None:
    """Blocking send of `tensor` to global rank `dst` (returns once `dst` received it);
    `group` only labels the record (a ring inside the "dp" group, say)."""
    tensor = tensor.detach().contiguous()
    _record("send", group, tensor, phase)
    dist.send(tensor, dst, tag=tag)


def isend(tensor: torch.Tensor, dst: int, ctx: ParallelContext, phase: str | None = None,
          tag: int = 0, group: str = "pp"):
    """Non-blocking send; returns the work handle: call .wait() before reusing `tensor`'s memory."""
    tensor = tensor.detach().contiguous()
    _record("send", group, tensor, phase)
    return dist.isend(tensor, dst, tag=tag)


def recv(shape, dtype: torch.dtype, src: int, ctx: ParallelContext, phase: str | None = None,
         tag: int = 0, group: str = "pp") -> torch.Tensor:
    """Blocking receive of a tensor of known shape and dtype from global rank `src`.
    A message matches a receive by (source, tag)."""
    buffer = torch.empty(shape, dtype=dtype, device=ctx.device)
    _record("recv", group, buffer, phase)
    dist.recv(buffer, src, tag=tag)
    return buffer


def send_forward(output: torch.Tensor, ctx: ParallelContext) -> None:
    """Send activations to the next stage; nothing on the last stage."""
    if ctx.next_rank is not None:
        send(output, ctx.next_rank, ctx, phase="forward")


def recv_forward(shape, ctx: ParallelContext, dtype=torch.float32) -> torch.Tensor | None:
    """Receive activations from the previous stage; None on the first stage.
    The result does not require grad: the pipeline sets requires_grad_() on it."""
    return None if ctx.prev_rank is None else recv(shape, dtype, ctx.prev_rank, ctx, "forward")


def send_backward(grad: torch.Tensor, ctx: ParallelContext) -> None:
    """Send the gradient of this stage's input to the previous stage; nothing on the first."""
    if ctx.prev_rank is not None:
        send(grad, ctx.prev_rank, ctx, phase="backward")


def recv_backward(shape, ctx: ParallelContext, dtype=torch.float32) -> torch.Tensor | None:
    """Receive the gradient of this stage's output from the next stage; None on the last."""
    return None if ctx.next_rank is None else recv(shape, dtype, ctx.next_rank, ctx, "backward")


def _send_and_recv(tensor: torch.Tensor, peer: int, shape, dtype, ctx: ParallelContext,
                   send_phase: str, recv_phase: str) -> torch.Tensor:
    """Post a send and a receive with the same peer together, then wait for both."""
    tensor = tensor.detach().contiguous()
    buffer = torch.empty(shape, dtype=dtype, device=ctx.device)
    _record("send", "pp", tensor, send_phase)
    _record("recv", "pp", buffer, recv_phase)
    ops = [dist.P2POp(dist.isend, tensor, peer), dist.P2POp(dist.irecv, buffer, peer)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    return buffer


def exchange(tensor: torch.Tensor, peer: int, ctx: ParallelContext,
             phase: str | None = None) -> torch.Tensor:
    """Swap a tensor with global rank `peer` (both post the send and the receive together): the
    peer's tensor of the same shape and dtype. E.g. the tied embedding's gradient between the first
    and the last pipeline stage."""
    return _send_and_recv(tensor, peer, tensor.shape, tensor.dtype, ctx, phase, phase)


def send_forward_recv_backward(output: torch.Tensor, shape, ctx: ParallelContext,
                               dtype=torch.float32) -> torch.Tensor | None:
    """1F1B steady state: send activations to the next stage while receiving its gradient."""
    if ctx.next_rank is None:
        return None
    return _send_and_recv(output, ctx.next_rank, shape, dtype, ctx, "forward", "backward")


def send_backward_recv_forward(grad: torch.Tensor, shape, ctx: ParallelContext,
                               dtype=torch.float32) -> torch.Tensor | None:
    """1F1B steady state: send a gradient to the previous stage while receiving activations."""
    if ctx.prev_rank is None:
        return None
    return _send_and_recv(grad, ctx.prev_rank, shape, dtype, ctx, "backward", "forward")
