"""The 3D mesh (MT-NLG's layout in miniature): a GPT sliced by tensor parallelism inside each
pipeline stage, stages chained by pipeline parallelism, the whole replicated by data parallelism
(Smith et al. 2022, arXiv 2201.11990: 8-way tensor x 35-way pipeline x data parallel).

A rank's share of the model is `minimt.parallel.layout.MeshModel`'s (the Trainer's); here
`rank_holdings` says which layers and which slice each rank holds (for the picture); `bytes_per_step` is the closed form of what one rank sends
on each group per training step, checked against the CommCounter.
"""
from __future__ import annotations

from ..config import GPTConfig
from .context import rank_coords
from .pipeline_runtime import stage_layers
from .tensor import padded_vocab_size


def rank_holdings(config: GPTConfig, tp: int, pp: int, dp: int) -> list[dict]:
    """For every global rank (Megatron's order): its (dp, pp, tp) coordinates, the blocks it holds,
    whether it holds the embedding / final LayerNorm + output layer, and its tensor-parallel slice
    of the attention heads and of the vocabulary (real token ids; padding rows left out)."""
    out = []
    for rank in range(tp * pp * dp):
        d, p, t = rank_coords(rank, tp, pp, dp)
        heads = config.n_head // tp
        vocab = padded_vocab_size(config.vocab_size, tp) // tp
        out.append(dict(rank=rank, dp=d, pp=p, tp=t, layers=stage_layers(config.n_layer, pp)[p],
                        embedding=p == 0, head=p == pp - 1,
                        heads=range(t * heads, (t + 1) * heads),
                        vocab=range(t * vocab, min((t + 1) * vocab, config.vocab_size))))
    return out


def stage_numel(config: GPTConfig, tp: int, pp: int, pp_rank: int) -> int:
    """Parameters one rank of pipeline stage `pp_rank` holds with tensor parallelism tp (a last
    stage's copy of the tied embedding included)."""
    C, r, b = config.n_embd, config.mlp_ratio, 1 if config.bias else 0
    sharded = (3 * C * C + 3 * C * b + C * C + r * C * C + r * C * b + r * C * C) // tp
    replicated = b * 2 * C + 2 * C * (1 + b)  # two row-parallel biases, two LayerNorms
    n = len(stage_layers(config.n_layer, pp)[pp_rank]) * (sharded + replicated)
    embedding = padded_vocab_size(config.vocab_size, tp) // tp * C
    if pp_rank == 0:
        n += embedding + config.block_size * C
    if pp_rank == pp - 1:
        n += C * (1 + b) + (embedding if pp > 1 else 0)
    return n


def bytes_per_step(config: GPTConfig, tp: int, pp: int, dp: int, pp_rank: int,
                   batch_size: int, num_microbatches: int, seq_len: int | None = None,
                   element_size: int = 4) -> dict[str, int]:
    """Bytes of the tensors one rank of stage `pp_rank` hands to each group's collectives in one
    step (the CommCounter's `bytes`), fp32, a ZeRO-1 optimizer, a pipeline of one chunk per rank.

    batch_size: the global batch, split over dp, then into num_microbatches micro-batches.
    tp: per micro-batch, 2 all-reduces of (b, T, C) per block forward and 2 backward, one for the
        embedding (forward) and one for the output layer (backward), 3 of (b, T) in the loss.
    pp: per micro-batch an activation (b, T, C) sent forward and its gradient back; the first and
        last stage exchange the tied embedding's gradient (V_pad/tp, C).
    dp: ZeRO-1 reduce-scatters the gradients and all-gathers the weights: 2 x ceil(N/dp) * dp.
    """
    T = config.block_size if seq_len is None else seq_len
    C, m = config.n_embd, num_microbatches
    b = batch_size // dp // m
    first, last = pp_rank == 0, pp_rank == pp - 1
    layers = len(stage_layers(config.n_layer, pp)[pp_rank])
    activation = b * T * C
    tp_numel = m * (4 * layers * activation + first * activation + last * (activation + 3 * b * T))
    pp_numel = m * activation * ((not last) + (not first))
    if pp > 1 and (first or last):
        pp_numel += padded_vocab_size(config.vocab_size, tp) // tp * C
    padded = -(-stage_numel(config, tp, pp, pp_rank) // dp) * dp
    return {"tp": element_size * tp_numel * (tp > 1), "pp": element_size * pp_numel * (pp > 1),
            "dp": element_size * 2 * padded * (dp > 1)}
