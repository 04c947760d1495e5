"""Gradient norm, clipping and overflow checks that stay correct under tensor parallelism.

A tensor-parallel rank holds a shard of each split weight and a full copy of each replicated one
(LayerNorm, row-parallel bias). The global norm must count every parameter once: shards are summed
over the TP group, replicated parameters are counted on TP rank 0 only (Megatron-LM's
`param_is_not_tensor_parallel_duplicate`). A sharded parameter carries the attribute
`tensor_model_parallel = True` (Megatron's name); anything without it is treated as replicated.
An overflow on any rank must skip the step on every rank, so the found-inf flag is all-reduced
with MAX over the given groups.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist

def is_tensor_parallel(param: torch.Tensor) -> bool:
    """True for a parameter sharded across the TP group (marked `tensor_model_parallel = True`)."""
    return bool(getattr(param, "tensor_model_parallel", False))


def _groups(groups) -> list:
    """A list of process groups from None, one group or a sequence; empty when not distributed."""
    if groups is None or not (dist.is_available() and dist.is_initialized()):
        return []
    return list(groups) if isinstance(groups, (list, tuple)) else [groups]


def _grads(params: Iterable[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(p, p.grad) for p in params if p.grad is not None]


def _device(pairs) -> torch.device:
    """Where the reductions live: the gradients' device (CUDA for NCCL, CPU for gloo)."""
    return pairs[0][1].device if pairs else torch.device("cpu")


def get_grad_norm(params: Iterable[torch.Tensor], tp_group=None, norm_type: float = 2.0) -> float:
    """Global norm of the gradients of `params` over the TP group, each parameter counted once.

    norm_type 2: sqrt(sum over shards on all ranks + replicated params on rank 0 of g^2);
    norm_type inf: max |g| over all ranks (duplicates do not change a max).
    tp_group: the TP process group, or a list whose first entry is the TP group and the others
    groups holding different parameters (e.g. pipeline stages) whose norms are summed as well.
    """
    groups = _groups(tp_group)
    tp_rank = dist.get_rank(groups[0]) if groups else 0
    pairs = _grads(params)
    if norm_type == float("inf"):
        local = max((g.detach().abs().max().float() for _, g in pairs),
                    default=torch.tensor(0.0, device=_device(pairs)))
        total = local.clone().reshape(1)
        for group in groups:
            dist.all_reduce(total, op=dist.ReduceOp.MAX, group=group)
        return total.item()
    if norm_type != 2.0:
        raise ValueError(f"norm_type={norm_type} is not supported; use 2.0 or float('inf')")
    counted = [g for p, g in pairs if is_tensor_parallel(p) or tp_rank == 0]
    total = torch.zeros(1, dtype=torch.float64, device=_device(pairs))
    for g in counted:
        total += g.detach().double().pow(2).sum()
    for group in groups:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total.sqrt().item()


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float, tp_group=None) -> float:
    """Scale gradients in place so that their global (TP-aware) L2 norm is at most max_norm, as
    torch.nn.utils.clip_grad_norm_ does serially; returns the norm before clipping."""
    if not max_norm > 0:
        raise ValueError(f"max_norm={max_norm} must be positive (leave clipping out instead)")
    params = list(params)
    total_norm = get_grad_norm(params, tp_group)
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1.0:
        for _, g in _grads(params):
            g.detach().mul_(clip_coef)
    return total_norm


def found_inf(params: Iterable[torch.Tensor], groups=None) -> bool:
    """True if any gradient on any rank of `groups` holds inf or NaN (all-reduce MAX of the flag),
    so that every rank makes the same skip decision."""
    pairs = _grads(params)
    flag = torch.zeros(1, device=_device(pairs))
    for _, g in pairs:
        flag = torch.maximum(flag, (~torch.isfinite(g)).any().float())  # no host sync per tensor
    for group in _groups(groups):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag.item())
