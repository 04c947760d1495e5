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
    """(1,) tensor: sum of g^2 over `grads` in float64 (norm_type 2), or max |g| (norm_type inf)."""
    grads = list(grads)
    device = grads[0].device if grads else torch.device("cpu")
    if norm_type == float("inf"):
        return max((g.detach().abs().max().double() for g in grads),
                   default=torch.tensor(0.0, dtype=torch.float64, device=device)).reshape(1)
    if norm_type != 2.0:
        raise ValueError(f"norm_type={norm_type} is not supported; use 2.0 or float('inf')")
    total = torch.zeros(1, dtype=torch.float64, device=device)
    for g in grads:
        total += g.detach().double().pow(2).sum()
    return total


def get_grad_norm(params: Iterable[torch.Tensor], norm_type: float = 2.0) -> float:
    """Norm of the gradients of `params` (2: sqrt of the sum of squares; inf: max |g|)."""
    total = local_norm_power([g for _, g in grads_of(params)], norm_type)
    return (total if norm_type == float("inf") else total.sqrt()).item()


def scale_to_max_norm(params, total_norm: float, max_norm: float) -> float:
    """Multiply the gradients by max_norm / total_norm when that is below 1 (as
    torch.nn.utils.clip_grad_norm_, with its 1e-6); returns total_norm."""
    if not max_norm > 0:
        raise ValueError(f"max_norm={max_norm} must be positive (leave clipping out instead)")
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1.0:
        for _, g in grads_of(params):
            g.detach().mul_(clip_coef)
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
