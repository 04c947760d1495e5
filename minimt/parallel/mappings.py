"""Megatron-LM's autograd mappings for tensor and sequence parallelism, like its
tensor_parallel/mappings.py (Shoeybi et al. 2019, arXiv 1909.08053, section 3).

`copy_to_...` is their f (identity forward, all-reduce backward), `reduce_from_...` is g
(all-reduce forward, identity backward), plus gather/scatter along the last dimension and the
sequence-parallel all-gather / reduce-scatter along the tokens. Each takes the ParallelContext, is
the identity when tp_size == 1, and communicates only through comm's counted collectives.
"""
from __future__ import annotations

import torch

from .comm import (all_gather, all_gather_start, all_reduce, reduce_scatter_along,
                   reduce_scatter_along_start)
from .context import ParallelContext, divide


def _fresh(x: torch.Tensor) -> torch.Tensor:
    """A contiguous copy: collectives work in place and need dense memory."""
    return x.clone(memory_format=torch.contiguous_format)


def _split_last_dim(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """This tp rank's slice of the last dimension (no communication)."""
    width = divide(x.size(-1), ctx.tp_size, "last dimension", "tensor-parallel size")
    return _fresh(x.narrow(-1, ctx.tp_rank * width, width))  # (..., n / tp)


# ---------------------------------------------------------------------------- autograd primitives
# `ctx` is autograd's context object inside the Functions; `pctx` is the ParallelContext.
class _CopyToTensorModelParallelRegion(torch.autograd.Function):
    """f: identity forward, all-reduce of the gradient backward."""

    @staticmethod
    def forward(ctx, x, pctx):
        ### BEGIN SOLUTION
        ctx.pctx = pctx
        return x
        ### END SOLUTION

    @staticmethod
    def backward(ctx, grad):
        ### BEGIN SOLUTION
        return all_reduce(_fresh(grad), ctx.pctx, "tp", phase="backward"), None
        ### END SOLUTION


class _ReduceFromTensorModelParallelRegion(torch.autograd.Function):
    """g: all-reduce forward, identity backward."""

    @staticmethod
    def forward(ctx, x, pctx):
        ### BEGIN SOLUTION
        return all_reduce(_fresh(x), pctx, "tp", phase="forward")
        ### END SOLUTION

    @staticmethod
    def backward(ctx, grad):
        ### BEGIN SOLUTION
        return grad, None
        ### END SOLUTION


class _GatherFromTensorModelParallelRegion(torch.autograd.Function):
    """All-gather along the last dimension forward, keep this rank's slice backward."""

    @staticmethod
    def forward(ctx, x, pctx):
        ctx.pctx = pctx
        return all_gather(x, pctx, "tp", dim=-1, phase="forward")

    @staticmethod
    def backward(ctx, grad):
        return _split_last_dim(grad, ctx.pctx), None


class _ScatterToTensorModelParallelRegion(torch.autograd.Function):
    """Keep this rank's slice of the last dimension forward, all-gather backward."""

    @staticmethod
    def forward(ctx, x, pctx):
        ctx.pctx = pctx
        return _split_last_dim(x, pctx)

    @staticmethod
    def backward(ctx, grad):
        return all_gather(grad, ctx.pctx, "tp", dim=-1, phase="backward"), None


def copy_to_tensor_model_parallel_region(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """f: y = x; dL/dx = sum over tp ranks of dL/dy. Put before a column-parallel layer."""
    return x if ctx.tp_size == 1 else _CopyToTensorModelParallelRegion.apply(x, ctx)


def reduce_from_tensor_model_parallel_region(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """g: y = sum over tp ranks of x; dL/dx = dL/dy. Put after a row-parallel layer."""
    return x if ctx.tp_size == 1 else _ReduceFromTensorModelParallelRegion.apply(x, ctx)


def gather_from_tensor_model_parallel_region(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """(..., n/tp) -> (..., n): concatenate the tp shards; backward keeps this rank's slice."""
    return x if ctx.tp_size == 1 else _GatherFromTensorModelParallelRegion.apply(x, ctx)


def scatter_to_tensor_model_parallel_region(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """(..., n) -> (..., n/tp): this rank's slice; backward all-gathers the gradient."""
    return x if ctx.tp_size == 1 else _ScatterToTensorModelParallelRegion.apply(x, ctx)


# ---------------------------------------------------------------------------- sequence parallelism
# Korthikanti et al. 2022 (arXiv 2205.05198), section 4.2.2: outside the tensor-parallel regions
# (LayerNorms, dropout, residual adds) each tp rank holds s/t of the tokens. g (all-reduce) becomes
# a reduce-scatter along the sequence and f (identity) an all-gather, so a ring moves the same
# bytes: an all-reduce of N bytes sends 2(t-1)/t N per rank, an all-gather plus a reduce-scatter
# (t-1)/t N each. Megatron's layout is (s, b, h); minimt's is (B, T, C): the sequence is dim 1.
SEQUENCE_DIM = 1


class _GatherFromSequenceParallelRegion(torch.autograd.Function):
    """All-gather the sequence forward (B, T/t, C) -> (B, T, C); reduce-scatter the gradient."""

    @staticmethod
    def forward(ctx, x, pctx):
        ctx.pctx = pctx
        return all_gather(x, pctx, "tp", dim=SEQUENCE_DIM, phase="forward")

    @staticmethod
    def backward(ctx, grad):
        return reduce_scatter_along(grad, ctx.pctx, "tp", SEQUENCE_DIM, phase="backward"), None


class _ReduceScatterToSequenceParallelRegion(torch.autograd.Function):
    """Reduce-scatter partial sums forward (B, T, C) -> (B, T/t, C); all-gather the gradient."""

    @staticmethod
    def forward(ctx, x, pctx):
        ctx.pctx = pctx
        return reduce_scatter_along(x, pctx, "tp", SEQUENCE_DIM, phase="forward")

    @staticmethod
    def backward(ctx, grad):
        return all_gather(grad, ctx.pctx, "tp", dim=SEQUENCE_DIM, phase="backward"), None


def gather_from_sequence_parallel_region(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """(B, T/t, C) -> (B, T, C) before a column-parallel layer (replaces f under sequence
    parallelism); backward reduce-scatters the gradient."""
    return x if ctx.tp_size == 1 else _GatherFromSequenceParallelRegion.apply(x, ctx)


def reduce_scatter_to_sequence_parallel_region(x: torch.Tensor,
                                               ctx: ParallelContext) -> torch.Tensor:
    """Partial (B, T, C) -> summed (B, T/t, C) after a row-parallel layer (replaces g under
    sequence parallelism); backward all-gathers the gradient."""
    return x if ctx.tp_size == 1 else _ReduceScatterToSequenceParallelRegion.apply(x, ctx)


# Korthikanti et al. 2022, section 4.2.2 ("we only store the [sequence-split] input ... and
# perform an extra all-gather in the backward pass"), Megatron-LM's
# LinearWithGradAccumulationAndAsyncCommunication: a column-parallel layer after a
# sequence-parallel region keeps its s/t-token input, not the all-gathered s tokens, and
# all-gathers it again in backward. That re-gather is counted in its own phase, REGATHER_PHASE.
REGATHER_PHASE = "regather"


class _LinearWithSequenceParallelInput(torch.autograd.Function):
    """y = all_gather_sequence(x) W^T + b, saving x's shard (B, T/t, in) instead of (B, T, in)."""

    @staticmethod
    def forward(ctx, x, weight, bias, pctx):                          # x (B, T/t, in)
        ctx.pctx, ctx.has_bias = pctx, bias is not None
        ctx.save_for_backward(x, weight)
        total = all_gather(x, pctx, "tp", dim=SEQUENCE_DIM, phase="forward")  # (B, T, in)
        return torch.nn.functional.linear(total, weight, bias)        # (B, T, out/t)

    @staticmethod
    def backward(ctx, grad):                                          # (B, T, out/t)
        x, weight = ctx.saved_tensors
        # start re-gathering the input, compute dL/d(total input) meanwhile
        gathering = all_gather_start(x, ctx.pctx, "tp", SEQUENCE_DIM, phase=REGATHER_PHASE)
        grad_total = grad.matmul(weight)                              # (B, T, in): partial sums
        total = gathering.wait()                                      # (B, T, in)
        # start reduce-scattering dL/dx, compute the weight gradient meanwhile
        scattering = reduce_scatter_along_start(grad_total, ctx.pctx, "tp", SEQUENCE_DIM,
                                                phase="backward")
        grad_2d = grad.reshape(-1, grad.size(-1))                     # (B*T, out/t)
        grad_weight = grad_2d.t().matmul(total.reshape(-1, total.size(-1)))  # (out/t, in)
        grad_bias = grad_2d.sum(0) if ctx.has_bias else None          # (out/t,)
        return scattering.wait(), grad_weight, grad_bias, None        # dL/dx (B, T/t, in)


def linear_with_sequence_parallel_input(x: torch.Tensor, weight: torch.Tensor, bias,
                                        ctx: ParallelContext) -> torch.Tensor:
    """(B, T/t, in) -> (B, T, out/t): a column-parallel Linear on the all-gathered sequence that
    saves only this rank's tokens for backward and all-gathers them again there (phase
    REGATHER_PHASE), overlapped with the input-gradient matmul; the input gradient's
    reduce-scatter overlaps the weight-gradient matmul."""
    if ctx.tp_size == 1:
        return torch.nn.functional.linear(x, weight, bias)
    return _LinearWithSequenceParallelInput.apply(x, weight, bias, ctx)
