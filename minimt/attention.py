"""Attention from the formula: softmax(Q K^T / sqrt(d_k)) V (Vaswani et al. 2017, arXiv 1706.03762).

Tensors are shaped (batch, heads, seq, head_dim). Masks follow torch's convention: a bool mask is
True where attention is allowed, a float mask is added to the scores (-inf forbids). 16-bit inputs
are computed in fp32 and the result cast back (a bf16 softmax has 7x the error of torch's kernel).
`MultiHeadAttention` uses torch's fused kernel on its fast path and the formula here when asked
for the attention weights (for plots) or when `fused=False`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint


def scaled_dot_product_attention(q, k, v, mask=None, causal=False, dropout_p=0.0,
                                 return_weights=False):
    """softmax(q k^T / sqrt(d_k) + mask) v, equal to torch's fused kernel.

    q: (B, H, Tq, D); k, v: (B, H, Tk, D); mask: broadcastable to (B, H, Tq, Tk), bool (True =
    may attend) or float (added to the scores). `causal` lets query i see keys j <= i + (Tk - Tq)
    (the queries are the last Tq positions). A query that may attend to nothing gets a zero
    output, as in torch. 16-bit inputs are computed in fp32 (as torch's CPU kernel) and cast back.
    Returns the output (B, H, Tq, D) and, if `return_weights`, the weights (B, H, Tq, Tk).
    """
    check_attention_shapes(q, k, v, mask)
    out_dtype = q.dtype
    q, k, v = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in (q, k, v))
    ### BEGIN SOLUTION
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])            # (B, H, Tq, Tk), >= fp32
    allowed = combine_masks(mask, causal, q.shape[-2], k.shape[-2], q.device)
    if allowed is not None and allowed.dtype == torch.bool:
        scores = scores.masked_fill(~allowed, float("-inf"))
    elif allowed is not None:
        scores = scores + allowed                                         # additive float mask
    weights = torch.softmax(scores, dim=-1)                               # (B, H, Tq, Tk)
    if allowed is not None:  # rows with no allowed key are NaN after softmax; torch gives zeros
        blocked = ~allowed if allowed.dtype == torch.bool else allowed == float("-inf")
        weights = weights.masked_fill(blocked, 0.0)  # the mask's own shape: autograd saves it small
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v                                                     # (B, H, Tq, D)
    ### END SOLUTION
    out, weights = out.to(out_dtype), weights.to(out_dtype)
    return (out, weights) if return_weights else out


def check_attention_shapes(q, k, v, mask=None):
    """Refuse q, k, v (and a mask) whose shapes disagree, naming the dimension that does."""
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (batch, heads, seq, head_dim); got {shapes}")
    if len({q.shape[0], k.shape[0], v.shape[0]} - {1}) > 1:
        raise ValueError(f"q, k and v have {q.shape[0]}, {k.shape[0]} and {v.shape[0]} batch rows "
                         f"(dimension 0): they must be equal; got {shapes}")
    if not q.shape[1] == k.shape[1] == v.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads, k {k.shape[1]} and v {v.shape[1]}: grouped-"
                         f"query attention is not supported; repeat each key/value head for its "
                         f"group first, e.g. "
                         f"k.repeat_interleave({q.shape[1]} // {k.shape[1]}, dim=1); got {shapes}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k have head sizes {q.shape[-1]} and {k.shape[-1]} (last "
                         f"dimension): q k^T needs them equal; got {shapes}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v hold {k.shape[-2]} and {v.shape[-2]} positions (dimension 2): "
                         f"every key needs its value; got {shapes}")
    scores = (max(q.shape[0], k.shape[0]), q.shape[1], q.shape[2], k.shape[2])
    check_mask_shape(mask, scores)


def check_mask_shape(mask, scores_shape):
    """A mask must broadcast to the scores' (batch, heads, q, k) without growing them."""
    if mask is None:
        return
    try:
        fits = torch.broadcast_shapes(mask.shape, scores_shape) == torch.Size(scores_shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' "
                         f"(batch, heads, q, k) = {tuple(scores_shape)}: give it shape (q, k) = "
                         f"{tuple(scores_shape[2:])} or (batch, 1, q, k)")


def causal_mask(seq_len, kv_len=None, device=None):
    """(Tq, Tk) bool: query i (absolute position Tk - Tq + i) may see keys at positions <= its own."""
    ### BEGIN SOLUTION
    kv_len = seq_len if kv_len is None else kv_len
    q_pos = torch.arange(kv_len - seq_len, kv_len, device=device)[:, None]  # (Tq, 1)
    k_pos = torch.arange(kv_len, device=device)[None, :]                     # (1, Tk)
    return k_pos <= q_pos
    ### END SOLUTION


def local_mask(seq_len, window, device=None):
    """(T, T) bool causal sliding window: query i sees keys i-window+1 .. i (simplest sparse attention)."""
    if window < 1:
        raise ValueError(f"window={window} must be at least 1 (a token always sees itself)")
    pos = torch.arange(seq_len, device=device)
    distance = pos[:, None] - pos[None, :]                                   # (T, T): i - j
    return (distance >= 0) & (distance < window)


def combine_masks(mask, causal, seq_len, kv_len, device):
    """`mask` (bool: True = attend, or float: added to the scores) with the causal rule applied,
    in the mask's kind, or None when nothing is masked."""
    if not causal:
        return mask
    causal_part = causal_mask(seq_len, kv_len, device=device)
    if mask is None:
        return causal_part
    if mask.dtype == torch.bool:
        return mask & causal_part
    return mask.masked_fill(~causal_part, float("-inf"))


def sinusoidal_positions(seq_len, dim):
    """(T, C) fixed encodings: PE[p, 2i] = sin(p / 10000^(2i/C)), PE[p, 2i+1] = cos(same)."""
    if dim % 2:
        raise ValueError(f"dim={dim} must be even for sinusoidal positions (sin/cos pairs)")
    position = torch.arange(seq_len, dtype=torch.float32)[:, None]           # (T, 1)
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2) / dim)  # (C/2,)
    angles = position * inv_freq                                              # (T, C/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)       # (T, C)


class KVCache:
    """Keys and values of the tokens already seen by one attention layer, for fast decoding."""

    def __init__(self):
        self.k = None  # (B, H, T_past, D)
        self.v = None

    def __len__(self):
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k, v):
        """Add the new tokens' k, v (B, H, T_new, D); return all keys and values so far."""
        ### BEGIN SOLUTION
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat((self.k, k), dim=-2)
            self.v = torch.cat((self.v, v), dim=-2)
        return self.k, self.v
        ### END SOLUTION

    def reorder(self, index):
        """Keep the batch rows in `index` (beam search reorders its hypotheses every step)."""
        if self.k is not None:
            self.k, self.v = self.k[index], self.v[index]


class MultiHeadAttention(nn.Module):
    """Concat(head_1..head_h) W^O with head_i = Attention(X W_i^Q, X W_i^K, X W_i^V).

    Q, K and V come from one fused projection `c_attn` (C -> 3C, GPT-2's layout [Q | K | V], heads
    contiguous inside each). The number of heads is read from the projection's width, so a
    tensor-parallel copy whose `c_attn` holds only some heads runs this same code.
    """

    def __init__(self, n_embd, n_head, bias=False, dropout=0.0, causal=True, fused=True):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        self.head_dim = n_embd // n_head
        self.causal = causal
        self.fused = fused
        self.dropout = dropout
        self.recompute_core = False  # selective recomputation (Korthikanti et al. 2022): see GPT
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)   # W^Q, W^K, W^V side by side
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)       # W^O
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x, mask=None, kv_cache=None, need_weights=False):
        """x: (B, T, C) -> (B, T, C); with `need_weights` also the weights (B, H, T, T_kv)."""
        qkv_width, n_embd = self.c_attn.weight.shape  # (3*H*D, C); H: this rank's heads under tp
        if x.dim() != 3 or x.shape[-1] != n_embd:
            raise ValueError(f"x must be (batch, seq, n_embd={n_embd}), got shape {tuple(x.shape)}")
        heads = qkv_width // (3 * self.head_dim)
        past = len(kv_cache) if kv_cache is not None else 0
        check_mask_shape(mask, (x.shape[0], heads, x.shape[1], past + x.shape[1]))
        qkv = self.c_attn(x)                                                      # (B, T, 3*H*D)
        q, k, v = rearrange(qkv, "b t (three h d) -> three b h t d", three=3, d=self.head_dim)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)                                          # (B, H, Tk, D)
        if self.recompute_core and torch.is_grad_enabled() and not need_weights:
            # keep only q, k, v; the scores, softmax and weighted sum are recomputed in backward
            y, weights = checkpoint(self.core_attention, q, k, v, mask, False, use_reentrant=False)
        else:
            y, weights = self.core_attention(q, k, v, mask, need_weights)        # (B, H, T, D)
        y = rearrange(y, "b h t d -> b t (h d)")                                  # (B, T, H*D)
        y = self.resid_dropout(self.c_proj(y))                                    # (B, T, C)
        return (y, weights) if need_weights else y

    def core_attention(self, q, k, v, mask=None, need_weights=False):
        """softmax(q k^T / sqrt(D)) v for q (B, H, T, D), k, v (B, H, Tk, D): the part that
        selective recomputation recomputes (Megatron's CoreAttention).
        Returns (y, weights or None)."""
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights or not self.fused:
            y, weights = scaled_dot_product_attention(q, k, v, mask, self.causal, dropout_p,
                                                      return_weights=True)
        elif mask is None and (q.shape[-2] == k.shape[-2] or q.shape[-2] == 1 or not self.causal):
            # fast path: torch's fused kernel; one new query needs no mask (it sees the whole cache)
            is_causal = self.causal and q.shape[-2] == k.shape[-2] and q.shape[-2] > 1
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal)
        else:
            allowed = combine_masks(mask, self.causal, q.shape[-2], k.shape[-2], q.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
        return y, weights
