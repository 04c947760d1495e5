"""Megatron-LM's tensor-parallel layers (Shoeybi et al. 2019, arXiv 1909.08053) and
`apply_tensor_parallel`, which turns a serial GPT into one rank's share of it.

A Linear y = x W^T + b splits two ways:
- by columns of the output (ColumnParallelLinear): rank r holds rows r of W (out/tp of them) and
  computes its slice of y; the input enters through f (identity forward, all-reduce backward);
- by rows of the input (RowParallelLinear): rank r holds its in/tp columns of W, gets its slice
  of x and computes a partial y; g (all-reduce forward) sums the partials.
The MLP is column then row, attention splits by heads the same way: 2 all-reduces per layer
forward (the two g's) and 2 backward (the two f's). Sharded parameters carry Megatron's
attribute `tensor_model_parallel = True`; the others are replicated on every tp rank.

Sequence parallelism (Korthikanti et al. 2022, arXiv 2205.05198), `sequence_parallel=True`: the
LayerNorms, residual stream and dropout hold s/t of the tokens; f becomes an all-gather of the
sequence and g a reduce-scatter. The replicated parameters then see only their rank's tokens,
so their gradients are summed over the tp group (marked `sequence_parallel = True`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import GPT
from .comm import all_reduce
from .mappings import (SEQUENCE_DIM, copy_to_tensor_model_parallel_region,
                       gather_from_sequence_parallel_region,
                       gather_from_tensor_model_parallel_region,
                       linear_with_sequence_parallel_input,
                       reduce_from_tensor_model_parallel_region,
                       reduce_scatter_to_sequence_parallel_region,
                       scatter_to_tensor_model_parallel_region)
from .context import ParallelContext, check_ctx, divide
from .cross_entropy import vocab_parallel_cross_entropy


def _shard(weight: torch.Tensor, dim: int, ctx: ParallelContext) -> nn.Parameter:
    """This rank's contiguous 1/tp slice of a serial tensor along `dim`, as a new Parameter."""
    size = divide(weight.shape[dim], ctx.tp_size, f"dimension {dim} ({weight.shape[dim]})",
                  "tensor-parallel size")
    param = nn.Parameter(weight.detach().narrow(dim, ctx.tp_rank * size, size).clone())
    param.tensor_model_parallel = True
    param.partition_dim = dim
    return param


class ColumnParallelLinear(nn.Module):
    """y = x A^T with A split by output rows: rank r computes y[..., r*out/tp:(r+1)*out/tp].

    gather_output=True all-gathers the slices into the full y; False leaves y split, ready for a
    RowParallelLinear(input_is_parallel=True).
    """

    def __init__(self, serial: nn.Linear, ctx: ParallelContext, gather_output: bool = True,
                 sequence_parallel: bool = False):
        super().__init__()
        self.ctx, self.gather_output, self.sequence_parallel = ctx, gather_output, sequence_parallel
        self.weight = _shard(serial.weight, 0, ctx)                   # (out/tp, in)
        self.bias = None if serial.bias is None else _shard(serial.bias, 0, ctx)  # (out/tp,)

    def forward(self, x):                                             # (B, T, in) or (B, T/tp, in)
        """This rank's slice y = x A_r^T + b_r, (B, T, out/tp), or all of y (B, T, out) when
        gather_output. x enters through f (copy_to_tensor_model_parallel_region: identity
        forward, all-reduce backward), then F.linear(x, self.weight, self.bias). With
        sequence_parallel x holds this rank's T/tp tokens: instead of f and F.linear,
        linear_with_sequence_parallel_input(x, self.weight, self.bias, self.ctx) all-gathers the
        tokens and applies the weight, saving only the (B, T/tp, in) shard for backward (as
        Megatron does). Then gather_from_tensor_model_parallel_region when self.gather_output."""
        ### BEGIN SOLUTION
        if self.sequence_parallel:  # (B, T/tp, in) -> (B, T, out/tp), saving the (B, T/tp, in)
            y = linear_with_sequence_parallel_input(x, self.weight, self.bias, self.ctx)
        else:
            x = copy_to_tensor_model_parallel_region(x, self.ctx)     # f
            y = F.linear(x, self.weight, self.bias)                   # (B, T, out/tp)
        return gather_from_tensor_model_parallel_region(y, self.ctx) if self.gather_output else y
        ### END SOLUTION


class RowParallelLinear(nn.Module):
    """y = x A^T + b with A split by input columns: partial products summed by g (all-reduce).

    input_is_parallel=True takes x already split (the output of a ColumnParallelLinear);
    False scatters a full x first. The bias is replicated and added once, after the sum.
    """

    def __init__(self, serial: nn.Linear, ctx: ParallelContext, input_is_parallel: bool = False,
                 sequence_parallel: bool = False):
        super().__init__()
        self.ctx, self.input_is_parallel = ctx, input_is_parallel
        self.sequence_parallel = sequence_parallel
        self.weight = _shard(serial.weight, 1, ctx)                   # (out, in/tp)
        self.bias = None if serial.bias is None else nn.Parameter(serial.bias.detach().clone())

    def forward(self, x):                                             # (B, T, in/tp) or (B, T, in)
        """y = g(x_r A_r^T) + b, (B, T, out) on every rank. Unless input_is_parallel, x is the
        whole input: keep this rank's in/tp columns first (scatter_to_tensor_model_parallel_region).
        The partial product F.linear(x, self.weight) (no bias) is summed over tp by g
        (reduce_from_tensor_model_parallel_region); with sequence_parallel it is summed and split
        by tokens instead (reduce_scatter_to_sequence_parallel_region: (B, T/tp, out)). The
        replicated bias is added once, after the sum."""
        ### BEGIN SOLUTION
        if not self.input_is_parallel:
            x = scatter_to_tensor_model_parallel_region(x, self.ctx)  # (B, T, in/tp)
        y = F.linear(x, self.weight)                                  # (B, T, out): partial
        if self.sequence_parallel:                                    # summed (B, T/tp, out)
            y = reduce_scatter_to_sequence_parallel_region(y, self.ctx)
        else:
            y = reduce_from_tensor_model_parallel_region(y, self.ctx)  # g
        return y if self.bias is None else y + self.bias              # (B, T, out)
        ### END SOLUTION


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    """The vocabulary rounded up to a multiple of tp, so every rank holds as many rows."""
    return -(-vocab_size // tp) * tp


class VocabParallelEmbedding(nn.Module):
    """Embedding table split by vocabulary rows; tokens outside a rank's rows give zeros there,
    and an all-reduce (g) assembles every token's row. The vocabulary is padded to a multiple of tp."""

    def __init__(self, serial: nn.Embedding, ctx: ParallelContext,
                 reduce_scatter_embeddings: bool = False):
        super().__init__()
        self.ctx, self.reduce_scatter_embeddings = ctx, reduce_scatter_embeddings
        self.vocab_size = serial.num_embeddings
        padded = padded_vocab_size(self.vocab_size, ctx.tp_size)
        table = F.pad(serial.weight.detach(), (0, 0, 0, padded - self.vocab_size))  # (V_pad, C)
        self.weight = _shard(table, 0, ctx)                           # (V_pad/tp, C)
        self.vocab_start = ctx.tp_rank * self.weight.shape[0]
        self.vocab_end = self.vocab_start + self.weight.shape[0]

    def forward(self, idx):                                           # (B, T) global ids
        outside = (idx < self.vocab_start) | (idx >= self.vocab_end)
        local = (idx - self.vocab_start).masked_fill(outside, 0)
        rows = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)  # (B, T, C)
        if self.reduce_scatter_embeddings:                            # SP: (B, T/tp, C)
            return reduce_scatter_to_sequence_parallel_region(rows, self.ctx)
        return reduce_from_tensor_model_parallel_region(rows, self.ctx)


class VocabParallelLMHead(nn.Module):
    """The output layer tied to a VocabParallelEmbedding: this rank's vocabulary slice of the
    logits, (B, T, V_pad/tp), with padding ids set to -inf so they never win or count."""

    def __init__(self, embedding: VocabParallelEmbedding, sequence_parallel: bool = False):
        super().__init__()
        self.embedding = embedding                                    # shares its weight
        self.sequence_parallel = sequence_parallel
        ids = torch.arange(embedding.vocab_start, embedding.vocab_end)
        self.register_buffer("is_padding", ids >= embedding.vocab_size, persistent=False)

    @property
    def weight(self) -> nn.Parameter:
        """The shared (V_pad/tp, C) weight, as nn.Linear's `.weight` (tied-gradient code uses it)."""
        return self.embedding.weight

    def forward(self, x):                                             # (B, T, C)
        if self.sequence_parallel:                                    # (B, T/tp, C) -> (B, T, C)
            x = gather_from_sequence_parallel_region(x, self.embedding.ctx)
        else:
            x = copy_to_tensor_model_parallel_region(x, self.embedding.ctx)  # f
        logits = F.linear(x, self.embedding.weight)                   # (B, T, V_pad/tp)
        return logits.masked_fill(self.is_padding, float("-inf"))


class SequenceParallelPositionEmbedding(nn.Module):
    """Learned positions for this rank's s/t tokens: the serial table's rows for all positions,
    then this rank's slice of the sequence (no communication; the weight is replicated)."""

    def __init__(self, serial: nn.Embedding, ctx: ParallelContext):
        super().__init__()
        self.ctx = ctx
        self.weight = nn.Parameter(serial.weight.detach().clone())   # (block_size, C)

    def forward(self, position_ids):                                  # (1 or B, T)
        seq_len = position_ids.shape[-1]
        local = divide(seq_len, self.ctx.tp_size, "sequence length",
                       "tensor-parallel size (sequence parallelism splits the tokens)")
        rows = F.embedding(position_ids, self.weight)                 # (1 or B, T, C)
        return rows.narrow(SEQUENCE_DIM, self.ctx.tp_rank * local, local)  # (., T/tp, C)


def _sum_over_tensor_parallel_group(grad: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """A replicated parameter's gradient from this rank's tokens -> the sum over all tokens."""
    return all_reduce(grad.clone(), ctx, "tp", phase="backward")


def gather_vocab_parallel_logits(logits: torch.Tensor, ctx: ParallelContext,
                                 vocab_size: int) -> torch.Tensor:
    """(B, T, V_pad/tp) slices -> full (B, T, V) logits on every rank (for decoding, not training)."""
    return gather_from_tensor_model_parallel_region(logits, ctx)[..., :vocab_size]


def qkv_rank_major(t: torch.Tensor, tp: int) -> torch.Tensor:
    """Fused [Q | K | V] rows (3C, ...) -> [Q_0 K_0 V_0 | Q_1 K_1 V_1 | ...]: a plain split into
    tp row blocks then gives rank r its heads of Q, K and V."""
    q, k, v = (part.chunk(tp, dim=0) for part in t.chunk(3, dim=0))
    return torch.cat([torch.cat(ranks) for ranks in zip(q, k, v)])


def qkv_part_major(t: torch.Tensor, tp: int) -> torch.Tensor:
    """The inverse of `qkv_rank_major`: [Q_0 K_0 V_0 | Q_1 ...] (3C, ...) -> [Q | K | V]."""
    per_rank = [block.chunk(3, dim=0) for block in t.chunk(tp, dim=0)]  # tp x (q_r, k_r, v_r)
    return torch.cat([torch.cat([blocks[i] for blocks in per_rank]) for i in range(3)])


def _split_qkv(c_attn: nn.Linear, ctx: ParallelContext) -> nn.Linear:
    """The fused QKV projection with its rows in `qkv_rank_major` order, ready for a column split."""
    regrouped = nn.Linear(c_attn.in_features, c_attn.out_features, bias=c_attn.bias is not None,
                          device=c_attn.weight.device, dtype=c_attn.weight.dtype)
    with torch.no_grad():
        regrouped.weight.copy_(qkv_rank_major(c_attn.weight, ctx.tp_size))
        if c_attn.bias is not None:
            regrouped.bias.copy_(qkv_rank_major(c_attn.bias, ctx.tp_size))
    return regrouped


def apply_tensor_parallel(model, ctx: ParallelContext, sequence_parallel: bool = False):
    """Turn a serial GPT (built identically on every rank) into this rank's tensor-parallel share,
    in place, by slicing its weights. Returns the model; call it as before:
    model(idx, targets) -> (logits (B, T, V_pad/tp): this rank's vocabulary slice, loss).
    sequence_parallel: also split the tokens between LayerNorms (sequence length divisible by
    tp)."""
    if not isinstance(model, GPT):
        raise TypeError(f"apply_tensor_parallel needs a minimt GPT, got {type(model).__name__}; "
                        f"for single layers use ColumnParallelLinear / RowParallelLinear")
    check_ctx(ctx, "apply_tensor_parallel")
    if getattr(model, "tp_ctx", None) is not None:
        raise ValueError("this model is already tensor parallel (apply_tensor_parallel was called "
                         "on it): call it once, on a freshly built serial GPT(config)")
    config = model.config
    tp = ctx.tp_size
    divide(config.n_head, tp, "n_head", "tensor-parallel size")
    divide(config.mlp_ratio * config.n_embd, tp, "MLP hidden size", "tensor-parallel size")
    if config.dropout > 0 and tp > 1:
        raise ValueError(f"dropout={config.dropout}: tensor-parallel dropout needs Megatron's "
                         f"per-rank RNG tracker, which minimt does not build; use dropout=0")
    sp = sequence_parallel and tp > 1
    embedding = VocabParallelEmbedding(model.transformer.wte, ctx, reduce_scatter_embeddings=sp)
    model.transformer.wte = embedding
    model.lm_head = VocabParallelLMHead(embedding, sequence_parallel=sp)
    model.loss_fn = functools.partial(vocab_parallel_cross_entropy, ctx=ctx)
    model.gather_logits = functools.partial(gather_vocab_parallel_logits, ctx=ctx,
                                            vocab_size=config.vocab_size)
    for block in model.transformer.h:
        block.attn.c_attn = ColumnParallelLinear(_split_qkv(block.attn.c_attn, ctx), ctx,
                                                 gather_output=False, sequence_parallel=sp)
        block.attn.c_proj = RowParallelLinear(block.attn.c_proj, ctx, input_is_parallel=True,
                                              sequence_parallel=sp)
        block.mlp.c_fc = ColumnParallelLinear(block.mlp.c_fc, ctx, gather_output=False,
                                              sequence_parallel=sp)
        block.mlp.c_proj = RowParallelLinear(block.mlp.c_proj, ctx, input_is_parallel=True,
                                             sequence_parallel=sp)
    if sp:
        model.transformer.wpe = SequenceParallelPositionEmbedding(model.transformer.wpe, ctx)
        for p in model.parameters():  # LayerNorms, row-parallel biases, positions
            if not getattr(p, "tensor_model_parallel", False):
                p.sequence_parallel = True
                p.register_hook(functools.partial(_sum_over_tensor_parallel_group, ctx=ctx))
    model.tp_ctx = ctx
    return model
