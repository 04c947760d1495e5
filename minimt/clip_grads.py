"""Gradient norm, clipping and overflow checks of one process's parameters (no communication).

Tensor, pipeline and data parallelism need the same three steps over the whole mesh, where a
parameter may be a shard or a copy: `minimt.parallel.grads.MeshGradients` provides them with the
same names, so code written against this module (MixedPrecisionOptimizer, the Trainer) takes
either.
"""
from __future__ import annotations

from typing import Iterable

import torch


def grads_of(params: Iterable[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, gradient) for the parameters that have a gradient."""
    return [(p, p.grad) for p in params if p.grad is not None]


def grad_device(pairs) -> torch.device:
    """Where the reductions live: the gradients' device (CUDA for NCCL, CPU for gloo)."""
    return pairs[0][1].device if pairs else torch.device("cpu")


def local_norm_power(grads, norm_type: float = 2.0) -> torch.Tensor:
    """(1,) float64 tensor: the sum of g^2 over `grads` (norm_type 2, so that ranks can add their
    sums) or max |g| (norm_type inf), from torch's fused per-tensor norms."""
    grads = list(grads)
    if norm_type not in (2.0, float("inf")):
        raise ValueError(f"norm_type={norm_type} is not supported; use 2.0 or float('inf')")
    if not grads:
        return torch.zeros(1, dtype=torch.float64)
    norm = torch.nn.utils.get_total_norm(grads, norm_type, foreach=True).double().reshape(1)
    return norm if norm_type == float("inf") else norm.pow(2)


def get_grad_norm(params: Iterable[torch.Tensor], norm_type: float = 2.0) -> float:
    """Norm of the gradients of `params` (2: sqrt of the sum of squares; inf: max |g|)."""
    total = local_norm_power([g for _, g in grads_of(params)], norm_type)
    return (total if norm_type == float("inf") else total.sqrt()).item()


def clip_factor(total_norm: float, max_norm: float) -> float:
    """What clipping multiplies the gradients by: min(1, max_norm / (total_norm + 1e-6)), the rule
    of torch.nn.utils.clip_grad_norm_ (for a flat gradient shard, which has no parameters)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm={max_norm} must be positive (leave clipping out instead)")
    return min(1.0, max_norm / (total_norm + 1e-6))


def scale_to_max_norm(params, total_norm: float, max_norm: float) -> float:
    """Multiply the gradients by max_norm / (total_norm + 1e-6) when that is below 1 (the rule
    of torch.nn.utils.clip_grad_norm_); returns total_norm."""
    if not max_norm > 0:
        raise ValueError(f"max_norm={max_norm} must be positive (leave clipping out instead)")
    pairs = grads_of(params)
    if pairs:
        torch.nn.utils.clip_grads_with_norm_([p for p, _ in pairs], max_norm,
                                             torch.tensor(total_norm), foreach=True)
    return total_norm


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Scale gradients in place so that their L2 norm is at most max_norm, as
    torch.nn.utils.clip_grad_norm_ does; returns the norm before clipping."""
    params = list(params)
    return scale_to_max_norm(params, get_grad_norm(params), max_norm)


def inf_flag(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """(1,) tensor, 1.0 if any gradient of `params` holds inf or NaN (no host sync per tensor)."""
    pairs = grads_of(params)
    flag = torch.zeros(1, device=grad_device(pairs))
    for _, g in pairs:
        flag = torch.maximum(flag, (~torch.isfinite(g)).any().float())
    return flag


def found_inf(params: Iterable[torch.Tensor]) -> bool:
    """True if any gradient of `params` holds inf or NaN."""
    return bool(inf_flag(params).item())
