"""The ring algorithm behind reduce-scatter, all-gather and all-reduce, written with point-to-point
messages through `comm`, so the CommCounter sees every byte a rank sends.

n ranks sit on a ring; each cuts the tensor into n chunks. A reduce-scatter runs n-1 steps: at
each step every rank sends one chunk to its right neighbour and adds the chunk it receives from
its left one, so after n-1 steps rank r holds the sum of chunk r. An all-gather passes the
finished chunks around the same ring in n-1 more steps. Each rank sends (n-1)/n of the tensor per
half, 2(n-1)/n for an all-reduce, whatever n is: the reason NCCL and gloo use rings for large
messages (Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms").
"""
from __future__ import annotations

import torch

from .comm import isend, recv
from .context import ParallelContext, divide


def _ring(ctx: ParallelContext, group: str) -> tuple[int, int, int, int]:
    """(my position, ring size, global rank of my right neighbour, of my left neighbour)."""
    ranks = list(range(ctx.world_size)) if group == "world" else getattr(ctx, f"{group}_ranks")
    me, n = ranks.index(ctx.rank), len(ranks)
    return me, n, ranks[(me + 1) % n], ranks[(me - 1) % n]


def ring_reduce_scatter(tensor: torch.Tensor, ctx: ParallelContext,
                        group: str = "dp") -> torch.Tensor:
    """Sum of `tensor` (n*k elements, flat) over the group's ranks, chunk r of it on group rank r:
    (n*k,) -> (k,), like torch.distributed.reduce_scatter_single, by n-1 ring steps."""
    me, n, right, left = _ring(ctx, group)
    divide(tensor.numel(), n, "tensor size of a ring reduce-scatter", f"the {group} size")
    chunks = [c.clone() for c in tensor.detach().flatten().chunk(n)]  # n x (k,)
    ### BEGIN SOLUTION
    for step in range(n - 1):
        send_index, recv_index = (me - step - 1) % n, (me - step - 2) % n
        work = isend(chunks[send_index], right, ctx, tag=step, group=group)
        incoming = recv(chunks[recv_index].shape, tensor.dtype, left, ctx, tag=step, group=group)
        chunks[recv_index] += incoming
        work.wait()
    ### END SOLUTION
    return chunks[me]  # (k,): after the last step, chunk `me` holds every rank's contribution


def ring_all_gather(chunk: torch.Tensor, ctx: ParallelContext, group: str = "dp") -> torch.Tensor:
    """Every rank's `chunk` (k,) concatenated in group-rank order, (n*k,), by n-1 ring steps."""
    me, n, right, left = _ring(ctx, group)
    chunks = [torch.empty_like(chunk) for _ in range(n)]
    chunks[me] = chunk.detach().clone()
    for step in range(n - 1):
        send_index, recv_index = (me - step) % n, (me - step - 1) % n
        work = isend(chunks[send_index], right, ctx, tag=n + step, group=group)
        chunks[recv_index] = recv(chunk.shape, chunk.dtype, left, ctx, tag=n + step, group=group)
        work.wait()
    return torch.cat(chunks)  # (n*k,)


def ring_all_reduce(tensor: torch.Tensor, ctx: ParallelContext, group: str = "dp") -> torch.Tensor:
    """Sum of `tensor` (flat, n*k elements) over the group on every rank: reduce-scatter, then
    all-gather. Returns a new (n*k,) tensor."""
    return ring_all_gather(ring_reduce_scatter(tensor, ctx, group), ctx, group)
