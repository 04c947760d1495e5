"""Checkers for 01_attention: attention from the formula, the causal and the local mask."""
from __future__ import annotations

from typing import Callable

import torch

from .core import ExerciseError, matches, run_cases


def _attention_variant(q, k, v, mask, scale, softmax_dim=-1):
    """A common wrong version of attention, to recognise the learner's bug."""
    scores = q @ k.transpose(-2, -1) * scale                              # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=softmax_dim).nan_to_num(0.0) @ v    # (B, H, Tq, D)


def _attention_hint(got, q, k, v, mask):
    """Name the classic bug (scale, softmax axis, mask) whose output the learner's matches."""
    from ..attention import scaled_dot_product_attention
    d = q.shape[-1]
    variants = [
        (_attention_variant(q, k, v, mask, 1.0), "no 1/sqrt(d_k) scaling: divide the scores "
         "Q K^T by sqrt(d_k) = sqrt(q.shape[-1]) before the softmax"),
        (_attention_variant(q, k, v, mask, 1.0 / d), "the scores are divided by d_k; divide by "
         "sqrt(d_k) instead"),
        (_attention_variant(q, k, v, mask, d ** -0.5, softmax_dim=-2), "softmax over the wrong "
         "axis: each query's weights over the keys must sum to 1, so use dim=-1"),
    ]
    if mask is not None:
        variants += [
            (scaled_dot_product_attention(q, k, v), "the mask is ignored: set the scores where "
             "mask is False to -inf before the softmax (scores.masked_fill(~mask, -inf))"),
            (_attention_variant(q, k, v, ~mask, d ** -0.5), "the mask is inverted: True means "
             "'may attend', so fill the scores where the mask is False"),
        ]
    for wrong, advice in variants:
        if matches(got, wrong):
            return advice
    return None


def _attention_cases():
    """Seeded float64 cases: no mask, causal, random (Tq != Tk) and sliding-window masks."""
    from ..attention import causal_mask, local_mask
    g = torch.Generator().manual_seed(0)

    def qkv(b, h, t_q, t_k, d):  # float64 so the comparison can be tight
        return [torch.randn(b, h, t, d, generator=g, dtype=torch.float64)
                for t in (t_q, t_k, t_k)]

    random_mask = torch.rand(3, 6, generator=g) < 0.5                      # (Tq, Tk)
    random_mask[:, 0] = True  # every query may attend somewhere
    return [(*qkv(1, 1, 4, 4, 8), None),
            (*qkv(2, 3, 5, 5, 16), causal_mask(5)),
            (*qkv(2, 2, 3, 6, 4), random_mask),
            (*qkv(1, 2, 6, 6, 32), local_mask(6, 2))]


def check_attention(fn: Callable) -> None:
    """fn(q, k, v, mask) -> softmax(q k^T / sqrt(d_k)) v, with q (B, H, Tq, D), k and v (B, H, Tk, D)
    and mask None or bool (Tq, Tk), True = may attend. Checked in float64 against minimt's."""
    from ..attention import scaled_dot_product_attention

    def reference(q, k, v, mask):
        return scaled_dot_product_attention(q, k, v, mask)

    run_cases("check_attention", fn, reference, _attention_cases(), _attention_hint,
              atol=1e-8, rtol=1e-6)


def _bool_mask(exercise: str, fn: Callable) -> Callable:
    """fn, checked to return a bool tensor: a float 0/1 mask would be *added* to the scores."""
    def wrapped(*args):
        got = fn(*args)
        if isinstance(got, torch.Tensor) and got.dtype != torch.bool:
            raise ExerciseError(
                f"{exercise}: return a bool tensor (True = may attend), not {got.dtype}; a float "
                f"mask means 'add to the scores' in torch's attention. Compare positions with <=, "
                f"which gives bools")
        return got
    return wrapped


def _mask_hint(got, known_mistakes):
    """The advice for the known mistake whose mask `got` equals, if any."""
    for wrong, advice in known_mistakes:
        if got.shape == wrong.shape and torch.equal(got, wrong):
            return advice
    return None


def check_causal_mask(fn: Callable) -> None:
    """fn(T) -> (T, T) bool, True where query i may attend to key j, i.e. j <= i."""
    from ..attention import causal_mask

    def hint(got, seq_len):
        ones = torch.ones(seq_len, seq_len, dtype=torch.bool)
        return _mask_hint(got, [
            (ones.triu(), "True above the diagonal lets a query see the future: keep keys j <= i "
             "(the lower triangle, torch.tril)"),
            (ones.tril(-1), "the diagonal must be True: a token may attend to itself"),
            (ones, "nothing is masked: key j must be hidden from query i when j > i"),
        ])

    cases = [(1,), (2,), (5,), (9,)]
    run_cases("check_causal_mask", _bool_mask("check_causal_mask", fn), causal_mask, cases, hint)


def check_local_mask(fn: Callable) -> None:
    """fn(T, window) -> (T, T) bool: query i may attend to keys i-window+1 .. i (causal window)."""
    from ..attention import local_mask

    def hint(got, seq_len, window):
        mistakes = [(local_mask(seq_len, w), f"the window is off by one: query i sees exactly "
                     f"`window` keys, i-window+1 .. i (found a window of {w})")
                    for w in (window - 1, window + 1) if w >= 1]
        pos = torch.arange(seq_len)
        band = (pos[:, None] - pos[None, :]).abs() < window                  # (T, T) both sides
        mistakes.append((band, "the window also looks ahead: keep only keys j <= i (causal)"))
        return _mask_hint(got, mistakes)

    cases = [(1, 1), (5, 1), (6, 2), (8, 3), (4, 10)]
    run_cases("check_local_mask", _bool_mask("check_local_mask", fn), local_mask, cases, hint)
