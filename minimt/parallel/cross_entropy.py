"""Cross entropy over vocabulary-parallel logits (Shoeybi et al. 2019, arXiv 1909.08053, sec. 3).

Each tensor-parallel rank holds the logits of its slice of the vocabulary, (B, T, V/tp). The loss
needs only three all-reduces of (B, T) numbers: the max, the logit of the target token and the
sum of exponentials. The full (B, T, V) logits never exist on any rank. As in Megatron-LM, 16-bit
logits are upcast to fp32 first: a bf16 exp-sum-log of 50k terms is off by ~0.02 in the loss.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .comm import all_reduce
from .context import ParallelContext

IGNORE_INDEX = -100  # as minimt.model: targets equal to this are left out of the mean


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token loss log(sum_j exp z_j) - z_target from sharded logits z, in named steps."""

    @staticmethod
    def forward(ctx, logits, targets, pctx):
        """Per-token loss (B, T) from this rank's slice of the logits (B, T, V/tp) and the global
        target ids (B, T), in five named steps; each all_reduce is comm's, in place:
        all_reduce(t, pctx, "tp", phase="forward") (op=dist.ReduceOp.MAX for a max).
        1. logits_max (B, T): the max over the whole vocabulary (this slice's max, all-reduced
           with MAX); shifted = logits.detach() - logits_max[..., None] (the backward is by hand).
        2. predicted_logit (B, T): the target's shifted logit, all-reduced (summed). This slice
           holds global ids start = tp_rank * V/tp .. start + V/tp - 1. Name
           index (B, T, 1) long: the target's position in this slice, (targets - start) clamped
           to 0 .. V/tp - 1; mine (B, T) bool: True where this slice holds the target. A rank
           contributes shifted.gather(-1, index)[..., 0] where mine, 0 elsewhere.
        3. sum_exp (B, T): the sum of exp(shifted) over the slice, all-reduced (summed).
        4. loss = log(sum_exp) - predicted_logit, returned.
        5. ctx.save_for_backward(softmax, index, mine), softmax = exp(shifted) / sum_exp[..., None]
           (B, T, V/tp): what the backward (task 03.6) reads.
        """
        ctx.logits_dtype = logits.dtype
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # 16-bit -> fp32
        ### BEGIN SOLUTION
        vocab_per_rank = logits.shape[-1]
        start = pctx.tp_rank * vocab_per_rank                      # first global id of my slice

        # 1. max over the whole vocabulary, for a numerically safe exp
        logits_max = logits.detach().amax(dim=-1)                  # (B, T)
        all_reduce(logits_max, pctx, "tp", op=dist.ReduceOp.MAX, phase="forward")
        shifted = logits.detach() - logits_max.unsqueeze(-1)       # (B, T, V/tp)

        # 2. the target's logit: the rank whose slice holds it contributes it, the others 0
        local_target = targets - start                             # (B, T)
        mine = (local_target >= 0) & (local_target < vocab_per_rank)
        index = local_target.clamp(0, vocab_per_rank - 1).unsqueeze(-1)
        predicted_logit = shifted.gather(-1, index).squeeze(-1) * mine  # (B, T)
        all_reduce(predicted_logit, pctx, "tp", phase="forward")

        # 3. sum of exponentials over the whole vocabulary
        exp_logits = shifted.exp()                                 # (B, T, V/tp)
        sum_exp = exp_logits.sum(dim=-1)                           # (B, T)
        all_reduce(sum_exp, pctx, "tp", phase="forward")

        # 4. the loss per token
        loss = sum_exp.log() - predicted_logit                     # (B, T)

        # 5. keep softmax and the target's position for the gradient
        ctx.save_for_backward(exp_logits / sum_exp.unsqueeze(-1), index, mine)
        return loss
        ### END SOLUTION

    @staticmethod
    def backward(ctx, grad_loss):                                  # (B, T)
        """dL/dlogits of this slice (B, T, V/tp): (softmax - one_hot) * grad_loss[..., None], where
        one_hot is 1 at `index` on the rank whose slice holds the target (`mine`), 0 elsewhere;
        softmax, index, mine = ctx.saved_tensors (see forward). Local, no communication. Returns
        (that gradient in ctx.logits_dtype, None, None): targets and pctx get no gradient."""
        ### BEGIN SOLUTION
        softmax, index, mine = ctx.saved_tensors
        grad = softmax.clone()                                     # (B, T, V/tp)
        grad.scatter_add_(-1, index, -mine.to(grad.dtype).unsqueeze(-1))
        return (grad * grad_loss.unsqueeze(-1)).to(ctx.logits_dtype), None, None
        ### END SOLUTION


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                                 ctx: ParallelContext) -> torch.Tensor:
    """Mean next-token loss from this rank's vocabulary slice of the logits.

    logits: (B, T, V/tp), this rank's slice (rank r holds ids r*V/tp .. (r+1)*V/tp - 1; padding
    ids carry -inf); targets: (B, T) global ids, IGNORE_INDEX to leave a token out.
    The loss is fp32 for 16-bit logits (fp64 stays fp64); their gradient has the logits' dtype.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must "
                         f"agree on (batch, seq)")
    keep = targets != IGNORE_INDEX
    per_token = _VocabParallelCrossEntropy.apply(logits, targets.where(keep, 0), ctx)  # (B, T)
    return (per_token * keep).sum() / keep.sum().clamp(min=1)
