"""Gradient norm, clipping and overflow checks over the whole (dp, pp, tp) mesh.

A tensor-parallel rank holds a shard of each split weight and a full copy of each replicated one
(LayerNorm, row-parallel bias): the global norm sums the shards over the TP group and counts a
replicated parameter on TP rank 0 only (Megatron-LM's `param_is_not_tensor_parallel_duplicate`;
a shard carries `tensor_model_parallel = True`). Pipeline stages hold different layers, so their
sums add up over the PP group, except the last stage's copy of the tied embedding, marked
`pipeline_duplicate = True`, which the first stage already counts. Data-parallel replicas hold
equal gradients after their all-reduce and are not summed, unless ZeRO-1 shards them over the
data-parallel group (`shard_grad_norm`). An overflow anywhere must skip the step everywhere, so the
found-inf flag is all-reduced with MAX over the world.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist

from ..clip_grads import clip_factor, grads_of, inf_flag, local_norm_power, scale_to_max_norm
from .comm import all_reduce
from .context import ParallelContext


def is_tensor_parallel(param: torch.Tensor) -> bool:
    """True for a parameter sharded across the TP group (marked `tensor_model_parallel = True`)."""
    return bool(getattr(param, "tensor_model_parallel", False))


def counts_in_norm(param: torch.Tensor, ctx: ParallelContext) -> bool:
    """Whether this rank counts `param` in the global norm: shards always, a replicated parameter
    on TP rank 0 only, a pipeline stage's copy of the tied weight never."""
    if getattr(param, "pipeline_duplicate", False):
        return False
    return is_tensor_parallel(param) or ctx.tp_rank == 0


class MeshGradients:
    """The serial `minimt.clip_grads` functions, over a ParallelContext's mesh."""

    def __init__(self, ctx: ParallelContext):
        self.ctx = ctx

    def get_grad_norm(self, params: Iterable[torch.Tensor], norm_type: float = 2.0) -> float:
        """Global norm of the gradients, each parameter of the serial model counted once."""
        pairs = grads_of(params)
        if norm_type == float("inf"):  # duplicates do not change a max
            total = local_norm_power([g for _, g in pairs], norm_type)
            for group in ("tp", "pp"):
                all_reduce(total, self.ctx, group, op=dist.ReduceOp.MAX)
            return total.item()
        total = local_norm_power([g for p, g in pairs if counts_in_norm(p, self.ctx)], norm_type)
        for group in ("tp", "pp"):
            all_reduce(total, self.ctx, group)
        return total.sqrt().item()

    def shard_grad_norm(self, pieces: Iterable[torch.Tensor]) -> float:
        """Global L2 norm of gradients that ZeRO-1 shards over dp as well: `pieces` are this rank's
        slices of the gradients of the parameters that count in the norm (counts_in_norm), no
        element held by two ranks of a tp x pp x dp grid, so the sums add up over it. The cp ranks
        of a grid point hold the same (cp-averaged) pieces: summing over them too would count
        each element cp times."""
        total = local_norm_power(pieces).to(self.ctx.device)  # a rank may hold no counted piece
        for group in ("tp", "pp", "dp"):
            all_reduce(total, self.ctx, group)
        return total.sqrt().item()

    def clip_shard(self, shard: torch.Tensor, pieces: Iterable[torch.Tensor],
                   max_norm: float) -> float:
        """Scale a ZeRO-1 gradient shard (in place) so that the global L2 norm of the counted
        `pieces` (views of `shard`) is at most max_norm (torch's clip_grad_norm_ rule); returns
        the norm before clipping."""
        total_norm = self.shard_grad_norm(pieces)
        shard.mul_(clip_factor(total_norm, max_norm))
        return total_norm

    def clip_grad_norm(self, params: Iterable[torch.Tensor], max_norm: float) -> float:
        """Scale every rank's gradients by the same factor so that the global L2 norm is at most
        max_norm; returns the global norm before clipping."""
        params = list(params)
        return scale_to_max_norm(params, self.get_grad_norm(params), max_norm)

    def found_inf(self, params: Iterable[torch.Tensor]) -> bool:
        """True on every rank if any rank's gradients hold inf or NaN."""
        return self.any_rank(inf_flag(params))

    def any_rank(self, flag: torch.Tensor) -> bool:
        """A (1,) flag of this rank (1.0 = found inf/NaN), MAX-reduced over the world: True on
        every rank if it is set on any."""
        return bool(all_reduce(flag, self.ctx, "world", op=dist.ReduceOp.MAX).item())
