"""Context parallelism: attention over a sequence split across cp ranks, by ring attention.

Attention by blocks: the softmax over all keys can be built one key block at a time, keeping per
query the block's output and the log-sum-exp (lse) of its scores, then merging two partial
results with weights exp(lse_i - lse) (the online softmax of FlashAttention; Milakov & Gimelshein
2018). Ring attention (Liu et al. 2023, arXiv 2310.01889): each of cp ranks holds s/cp queries,
keys and values; the K/V blocks travel once around the ring (through `comm`, group "cp"), each rank
merging the block it holds while the next one travels. The backward sends the K/V blocks around
again, with their gradients dK, dV travelling along and arriving home after cp hops.

Causal attention leaves the rank with the first positions almost idle (it sees few keys) and the
last rank with the most work. The zig-zag split (Megatron-LM's and ring-flash-attention's) cuts the
sequence into 2 cp chunks and gives rank r chunks r and 2cp-1-r: every rank the same work.
"""
from __future__ import annotations

import math

import torch

from . import comm
from .context import divide

LAYOUTS = ("contiguous", "zigzag")


def sequence_positions(seq_len: int, cp: int, rank: int, layout: str = "zigzag") -> torch.Tensor:
    """The positions of the sequence that cp rank `rank` holds, (seq_len / cp,), increasing."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: choose one of {LAYOUTS}")
    if layout == "contiguous":
        size = divide(seq_len, cp, "sequence length", "cp (context-parallel size)")
        return torch.arange(rank * size, (rank + 1) * size)
    size = divide(seq_len, 2 * cp, "sequence length", "2 * cp (zig-zag: 2 chunks per rank)")
    first, second = rank, 2 * cp - 1 - rank
    return torch.cat([torch.arange(first * size, (first + 1) * size),
                      torch.arange(second * size, (second + 1) * size)])


def _tiles(positions: torch.Tensor) -> list[slice]:
    """A rank's block in two tiles, its halves: the zig-zag chunks, or two halves of a contiguous
    block. Attention skips (query tile, key tile) pairs that causal masking hides entirely."""
    half = len(positions) // 2
    return [slice(0, len(positions))] if half == 0 else [slice(0, half),
                                                         slice(half, len(positions))]


def _visible_pairs(q_pos, k_pos, causal):
    """(query rows, key tile) pairs to compute: under causal attention only the queries at or
    after the key tile's first position, so every computed row sees a key (no -inf rows), and no
    pair at all where the key tile starts after the query tile: the work zig-zag balances."""
    pairs = []
    for qs in _tiles(q_pos):
        for ks in _tiles(k_pos):
            first = qs.start
            if causal:
                seeing = (q_pos[qs] >= k_pos[ks.start]).nonzero()
                if len(seeing) == 0:
                    continue
                first = qs.start + int(seeing[0])
            pairs.append((slice(first, qs.stop), ks))
    return pairs


def attention_work(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool) -> int:
    """Score entries block_attention computes for these positions (skipped pairs cost nothing)."""
    return sum((rows.stop - rows.start) * (ks.stop - ks.start)
               for rows, ks in _visible_pairs(q_pos, k_pos, causal))


def _scores(q, k, q_pos, k_pos, causal):
    """Scaled scores q k^T / sqrt(D), (B, H, Tq, Tk), -inf where causal hides a key."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    return scores


def _empty(q):
    """The attention to no key at all: out 0 (B, H, T, D), lse -inf (B, H, T)."""
    return torch.zeros_like(q), torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype,
                                           device=q.device)


def block_attention(q, k, v, q_pos, k_pos, causal: bool):
    """Attention of queries q (B, H, Tq, D) to one key block k, v (B, H, Tk, D) alone:
    (out (B, H, Tq, D), lse (B, H, Tq)); a query that sees no key gets out 0 and lse -inf."""
    out, lse = _empty(q)
    for rows, ks in _visible_pairs(q_pos, k_pos, causal):
        scores = _scores(q[..., rows, :], k[..., ks, :], q_pos[rows], k_pos[ks], causal)
        part_lse = torch.logsumexp(scores, dim=-1)                              # (B, H, tq)
        part_out = torch.exp(scores - part_lse[..., None]) @ v[..., ks, :]      # (B, H, tq, D)
        merged = merge_partials(out[..., rows, :], lse[..., rows], part_out, part_lse)
        before, after = slice(0, rows.start), slice(rows.stop, q.shape[-2])    # rows untouched
        out = torch.cat([out[..., before, :], merged[0], out[..., after, :]], dim=-2)
        lse = torch.cat([lse[..., before], merged[1], lse[..., after]], dim=-1)
    return out, lse


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Merge the attention of the same queries to two disjoint key blocks into the attention to
    both: out = w_a out_a + w_b out_b with w_i = exp(lse_i - lse), lse = log(e^lse_a + e^lse_b).
    out_*: (..., T, D), lse_*: (..., T); a row with lse -inf on both sides stays (0, -inf)."""
    ### BEGIN SOLUTION
    lse = torch.logaddexp(lse_a, lse_b)                                         # (..., T)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)  # avoid -inf - -inf
    out = (torch.exp(lse_a - safe)[..., None] * out_a +
           torch.exp(lse_b - safe)[..., None] * out_b)
    ### END SOLUTION
    return out, lse


def blockwise_attention(q, k, v, block_size: int, causal: bool = True) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q, k, v (B, H, T, D), one key block of `block_size` at a
    time merged with merge_partials: F.scaled_dot_product_attention's result, in one process."""
    positions = torch.arange(q.shape[-2], device=q.device)
    out, lse = _empty(q)
    for start in range(0, k.shape[-2], block_size):
        block = slice(start, start + block_size)
        part = block_attention(q, k[..., block, :], v[..., block, :], positions,
                               positions[block], causal)
        out, lse = merge_partials(out, lse, *part)
    return out


def _ring(ctx, ranks):
    """(my index in the ring, ring size, right neighbour, left neighbour) as global ranks."""
    me, n = ranks.index(ctx.rank), len(ranks)
    return me, n, ranks[(me + 1) % n], ranks[(me - 1) % n]


def ring_step(q, q_pos, kv, kv_pos, out, lse, ctx, ranks, step: int, causal: bool):
    """Step `step` of ring attention's forward on this rank. kv (2, B, H, Tk, D) is the K/V block
    it holds (of the rank `step` places to its left), at positions kv_pos. Send kv on to the right
    neighbour (unless this is the last step), merge q's attention to it into (out, lse), and
    receive the next block from the left neighbour. Returns (out, lse, next kv or None)."""
    me, n, right, left = _ring(ctx, ranks)
    ### BEGIN SOLUTION
    work = None
    if step < n - 1:
        work = comm.isend(kv, right, ctx, "forward", tag=step, group="cp")
    out, lse = merge_partials(out, lse, *block_attention(q, kv[0], kv[1], q_pos, kv_pos, causal))
    incoming = None
    if work is not None:
        incoming = comm.recv(kv.shape, kv.dtype, left, ctx, "forward", tag=step, group="cp")
        work.wait()
    ### END SOLUTION
    return out, lse, incoming


def block_attention_backward(q, k, v, q_pos, k_pos, out, lse, dout, causal: bool):
    """Gradients (dq, dk, dv) of one key block's share, from the final out and lse (the whole
    softmax's): P = exp(S - lse), dV = P^T dO, dS = P (dO V^T - rowsum(dO * O)), as FlashAttention."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    scale = 1.0 / math.sqrt(q.shape[-1])
    delta = (dout * out).sum(-1)                                                # (B, H, Tq)
    for qs, ks in _visible_pairs(q_pos, k_pos, causal):
        scores = _scores(q[..., qs, :], k[..., ks, :], q_pos[qs], k_pos[ks], causal)
        probs = torch.exp(scores - lse[..., qs, None])                         # (B, H, tq, tk)
        dv[..., ks, :] += probs.transpose(-2, -1) @ dout[..., qs, :]
        dscores = probs * (dout[..., qs, :] @ v[..., ks, :].transpose(-2, -1) - delta[..., qs, None])
        dq[..., qs, :] += dscores @ k[..., ks, :] * scale
        dk[..., ks, :] += dscores.transpose(-2, -1) @ q[..., qs, :] * scale
    return dq, dk, dv


class _RingAttention(torch.autograd.Function):
    """Ring attention's forward (ring_step cp times) and backward (K/V around the ring again,
    dK/dV travelling with them)."""

    @staticmethod
    def forward(fctx, q, k, v, pctx, ranks, causal, layout):
        me, n, right, left = _ring(pctx, ranks)
        seq_len = q.shape[-2] * n
        q_pos = sequence_positions(seq_len, n, me, layout).to(q.device)
        out, lse = _empty(q)
        kv = torch.stack([k, v]).detach()                                       # (2, B, H, T/cp, D)
        for step in range(n):
            kv_pos = sequence_positions(seq_len, n, (me - step) % n, layout).to(q.device)
            out, lse, kv = ring_step(q, q_pos, kv, kv_pos, out, lse, pctx, ranks, step, causal)
        fctx.save_for_backward(q, k, v, out, lse)
        fctx.ring = (pctx, ranks, causal, layout, q_pos)
        return out

    @staticmethod
    def backward(fctx, dout):
        q, k, v, out, lse = fctx.saved_tensors
        pctx, ranks, causal, layout, q_pos = fctx.ring
        me, n, right, left = _ring(pctx, ranks)
        kv, dkv = torch.stack([k, v]), torch.zeros(2, *k.shape, dtype=k.dtype, device=k.device)
        dq = torch.zeros_like(q)
        for step in range(n):
            kv_pos = sequence_positions(q.shape[-2] * n, n, (me - step) % n, layout).to(q.device)
            sends = [] if step == n - 1 else [comm.isend(kv, right, pctx, "backward", tag=step,
                                                         group="cp")]
            dq_part, dk_part, dv_part = block_attention_backward(q, kv[0], kv[1], q_pos, kv_pos,
                                                                 out, lse, dout, causal)
            dq += dq_part
            dkv = dkv + torch.stack([dk_part, dv_part])
            if n == 1:  # one rank: nothing travels
                break
            sends.append(comm.isend(dkv, right, pctx, "backward", tag=n + step, group="cp"))
            if step < n - 1:
                kv = comm.recv(kv.shape, kv.dtype, left, pctx, "backward", tag=step, group="cp")
            dkv = comm.recv(dkv.shape, dkv.dtype, left, pctx, "backward", tag=n + step, group="cp")
            for work in sends:
                work.wait()
        return dq, dkv[0], dkv[1], None, None, None, None  # dkv: home after n hops


def ring_attention(q, k, v, ctx, causal: bool = True, layout: str = "zigzag", ranks=None):
    """Attention of this rank's queries to the whole sequence, q, k, v (B, H, s/cp, D) holding the
    positions sequence_positions(s, cp, rank, layout); cp = len(ranks) (default: every rank).
    Equal to F.scaled_dot_product_attention on the whole sequence, rows of this rank."""
    ranks = list(range(ctx.world_size)) if ranks is None else list(ranks)
    return _RingAttention.apply(q, k, v, ctx, ranks, causal, layout)


def ring_step_bytes(batch: int, heads: int, seq_len: int, head_dim: int, cp: int,
                    element_size: int = 4) -> int:
    """Bytes one rank sends per forward ring step: its K and V blocks, 2 B H (s/cp) D elements."""
    return 2 * batch * heads * (seq_len // cp) * head_dim * element_size
