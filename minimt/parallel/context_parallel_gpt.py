"""The GPT on a context-parallel group: each of cp ranks holds s/cp of every sequence.

Only attention mixes positions, so everything else (embeddings, LayerNorms, MLPs, the loss) runs
unchanged on this rank's tokens; each block's attention core becomes ring attention over the cp
group (context_parallel.py). The split is the zig-zag one (rank r holds chunks r and 2cp-1-r of
2cp), so causal attention costs every rank the same, and the position embedding gets each token's
true position. Every cp rank holds all the weights: its loss is the mean over its s/cp tokens, so
the serial gradient (of the mean over all tokens) is the mean of the cp ranks' gradients, the
all-reduce Megatron-LM does over its data-parallel-with-context-parallel group. In a pipeline the
cp ranks of a stage run the same schedule side by side: the messages between stages are
(b, s/cp, C), and each stage's attention rings over its own cp group.
"""
from __future__ import annotations

import functools

import torch

from . import comm
from .context import ParallelContext
from .context_parallel import ring_attention, sequence_positions

CP_LAYOUT = "zigzag"


def cp_positions(seq_len: int, ctx: ParallelContext) -> torch.Tensor:
    """The positions of a seq_len sequence that this cp rank holds, (seq_len / cp,)."""
    return sequence_positions(seq_len, ctx.cp_size, ctx.cp_rank, CP_LAYOUT).to(ctx.device)


def check_context_parallel(config, cp: int, block_size: int | None = None) -> None:
    """Raise a ValueError saying what to change unless the GPT can run at this cp."""
    if cp == 1:
        return
    if config.dropout:
        raise ValueError(f"--cp {cp}: ring attention has no attention dropout; build the model "
                         f"with dropout=0 (it is {config.dropout})")
    seq_len = block_size or config.block_size
    if seq_len % (2 * cp):
        raise ValueError(f"--cp {cp}: the zig-zag split cuts each sequence into 2*cp = {2 * cp} "
                         f"chunks, but its length is {seq_len}; use a block size that is a "
                         f"multiple of {2 * cp}")


def apply_context_parallel(model, ctx: ParallelContext, stages=()) -> None:
    """In place: the GPT's attention cores become ring attention over ctx's cp group, and the
    position embedding of the model and of its pipeline `stages` (GPTStage embeds with its own
    `embed`) reads this rank's positions (they then take (B, s/cp) tokens)."""
    for block in model.transformer.h:
        block.attn.core_attention = functools.partial(_ring_core, block.attn, ctx)
    for holder in (model, *stages):
        holder.embed = functools.partial(_cp_embed, holder.embed, ctx)


def _cp_embed(serial_embed, ctx, idx, position_ids=None, past: int = 0):
    """serial_embed(idx (B, s/cp)) at the positions this cp rank holds."""
    if position_ids is None:
        position_ids = cp_positions(idx.shape[1] * ctx.cp_size, ctx)[None]           # (1, s/cp)
    return serial_embed(idx, position_ids, past)


def _ring_core(attn, ctx, q, k, v, mask=None, need_weights=False):
    """MultiHeadAttention.core_attention over the cp ring: q, k, v (B, H, s/cp, D)."""
    if mask is not None or need_weights:
        raise ValueError("context-parallel attention takes no mask and returns no weights")
    return ring_attention(q, k, v, ctx, causal=attn.causal, layout=CP_LAYOUT,
                          ranks=ctx.cp_ranks), None


def local_sequence(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """This cp rank's columns of a batch x (B, s) -> (B, s/cp)."""
    return x[:, cp_positions(x.shape[1], ctx)] if ctx.cp_size > 1 else x


def average_over_cp(grads, ctx: ParallelContext) -> None:
    """Every gradient tensor (None skipped) becomes its mean over the cp ranks (the gradient of
    the whole sequence's mean loss), one all-reduce of all of them flattened together."""
    grads = [g for g in grads if g is not None]
    if ctx.cp_size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    comm.all_reduce(flat, ctx, "cp", phase="backward")
    flat /= ctx.cp_size
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))
