"""Checkers for 01_attention: attention from the formula, the causal and the local mask.
Oracles: torch's fused kernel F.scaled_dot_product_attention and masks built with torch.tril."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .core import ExerciseError, compare, learner, matches, run_cases, shape_first, task


def _tril(rows: int, cols: int, diagonal: int = 0) -> torch.Tensor:
    """(rows, cols) bool, True on and below the given diagonal (torch.tril of ones)."""
    return torch.ones(rows, cols, dtype=torch.bool).tril(diagonal)


def _attention_variant(q, k, v, mask, scale, softmax_dim=-1):
    """A common wrong version of attention, to recognise the learner's bug."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale                 # (B, H, Tq, Tk)
    scores = scores if mask is None else torch.where(mask, scores, float("-inf"))
    return torch.softmax(scores, dim=softmax_dim).nan_to_num(0.0) @ v    # (B, H, Tq, D)


def _attention_hint(got, q, k, v, mask):
    """Name the classic bug (scale, softmax axis, mask) whose output the learner's matches."""
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
            (_attention_variant(q, k, v, None, d ** -0.5), "the mask is ignored: set the scores where "
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
    g = torch.Generator().manual_seed(0)

    def qkv(b, h, t_q, t_k, d):  # float64 so the comparison can be tight
        return [torch.randn(b, h, t, d, generator=g, dtype=torch.float64)
                for t in (t_q, t_k, t_k)]

    random_mask = torch.rand(3, 6, generator=g) < 0.5                      # (Tq, Tk)
    random_mask[:, 0] = True  # every query may attend somewhere
    return [(*qkv(1, 1, 4, 4, 8), None),
            (*qkv(2, 3, 5, 5, 16), _tril(5, 5)),
            (*qkv(2, 2, 3, 6, 4), random_mask),
            (*qkv(1, 2, 6, 6, 32), _tril(6, 6) & ~_tril(6, 6, -2))]


def check_attention(fn: Callable) -> None:
    """fn(q, k, v, mask) -> softmax(q k^T / sqrt(d_k)) v, with q (B, H, Tq, D), k and v (B, H, Tk, D)
    and mask None or bool (Tq, Tk), True = may attend. Checked in float64 against torch's kernel."""
    def reference(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

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
    def hint(got, seq_len):
        ones = torch.ones(seq_len, seq_len, dtype=torch.bool)
        return _mask_hint(got, [
            (ones.triu(), "True above the diagonal lets a query see the future: keep keys j <= i "
             "(the lower triangle, torch.tril)"),
            (ones.tril(-1), "the diagonal must be True: a token may attend to itself"),
            (ones, "nothing is masked: key j must be hidden from query i when j > i"),
        ])

    cases = [(1,), (2,), (5,), (9,)]
    run_cases("check_causal_mask", _bool_mask("check_causal_mask", fn), lambda t: _tril(t, t),
              cases, hint)


def check_dilated_mask(fn: Callable) -> None:
    """fn(T, window, dilation) -> (T, T) bool: query i may attend to the `window` keys i,
    i - dilation, ..., i - (window-1) dilation (a dilated sliding window, Longformer's)."""
    def diagonals(seq_len, offsets):  # the mask with True on the diagonals -k, k in offsets
        mask = torch.zeros(seq_len, seq_len, dtype=torch.bool)
        for k in offsets:
            if k < seq_len:
                mask |= torch.diag(torch.ones(seq_len - k, dtype=torch.bool), -k)
        return mask

    def dilated(seq_len, window, dilation):
        return diagonals(seq_len, [k * dilation for k in range(window)])

    def hint(got, seq_len, window, dilation):
        mistakes = [(diagonals(seq_len, range(window)), "the keys are `dilation` apart: i, "
                     "i - dilation, i - 2 dilation, ... (this is the plain window)"),
                    (diagonals(seq_len, range(0, window, dilation)), "`window` counts keys, not "
                     "positions: the farthest key is (window-1) x dilation behind"),
                    (dilated(seq_len, window + 1, dilation), "one key too many: query i sees "
                     "exactly `window` keys, itself included")]
        both = dilated(seq_len, window, dilation) | dilated(seq_len, window, dilation).T
        mistakes.append((both, "the window also looks ahead: keep only keys j <= i (causal)"))
        return _mask_hint(got, mistakes)

    cases = [(1, 1, 1), (6, 2, 1), (8, 3, 2), (9, 2, 3), (5, 10, 2), (12, 4, 3)]
    run_cases("check_dilated_mask", _bool_mask("check_dilated_mask", fn), dilated, cases, hint)


# ---------------------------------------------------------------------------- tasks in the package

def _check_causal_mask_task() -> None:
    """minimt.attention.causal_mask(seq_len, kv_len) against torch.tril, queries = last positions."""
    causal_mask = learner("minimt.attention:causal_mask")
    cases = [(1, None), (4, None), (7, None), (1, 5), (3, 7), (6, 6)]
    for i, (t_q, t_k) in enumerate(cases):
        kv = t_q if t_k is None else t_k
        name = f"task 01.2, case {i + 1} of {len(cases)} (seq_len={t_q}, kv_len={t_k})"
        got = causal_mask(t_q, t_k)
        shape_first(name, got, (t_q, kv), "one row per query (seq_len), one column per key (kv_len)")
        if got.dtype != torch.bool:
            raise ExerciseError(f"{name}: dtype {got.dtype}; return bools (True = may attend): "
                                f"compare positions with <=")
        expected = _tril(t_q, kv, kv - t_q)
        if not torch.equal(got, expected):
            hint = _mask_hint(got, [
                (_tril(t_q, kv), "with kv_len > seq_len the queries are the LAST seq_len positions: "
                 "query i sits at position kv_len - seq_len + i"),
                (~_tril(t_q, kv, kv - t_q - 1), "True above the diagonal lets a query see the "
                 "future: keep keys j <= the query's position (compare with <=, not >=)"),
                (_tril(t_q, kv, kv - t_q - 1), "the diagonal must be True: a token sees itself"),
                (torch.ones(t_q, kv, dtype=torch.bool), "nothing is masked: hide key j from query "
                 "i when j is after i")]) or ("query i (at position kv_len - seq_len + i) sees keys "
                                              "j <= its position")
            raise ExerciseError(f"{name}: got\n{got.int()}\nexpected\n{expected.int()}\nHint: {hint}")
    print(f"task 01.2: causal_mask equals torch.tril on all {len(cases)} cases")


def _additive(mask, causal, t_q, t_k, dtype):
    """The mask (bool or float) and the causal rule as one float mask added to the scores."""
    add = torch.zeros(t_q, t_k, dtype=dtype)
    if mask is not None:
        add = add + (mask.to(dtype) if mask.dtype != torch.bool
                     else torch.zeros((), dtype=dtype).masked_fill(~mask, float("-inf")))
    if causal:
        add = add.masked_fill(~_tril(t_q, t_k, t_k - t_q), float("-inf"))
    return add


def _formula(q, k, v, add, scale, softmax_dim=-1):
    """softmax(q k^T * scale + add) v with all-masked rows giving zeros (to name a bug)."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale + add            # (B, H, Tq, Tk)
    return torch.softmax(scores, dim=softmax_dim).nan_to_num(0.0) @ v      # (B, H, Tq, D)


def _task_attention_hint(got, expected, q, k, v, mask, causal):
    """The likely mistake behind a wrong output of task 01.1, or None."""
    t_q, t_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    add = _additive(mask, causal, t_q, t_k, q.dtype)
    empty = torch.isinf(add).all(-1)                                       # (Tq,) no key allowed
    finite = torch.isfinite(got)
    if empty.any() and not finite[..., empty, :].all() and finite[..., ~empty, :].all():
        return ("a query whose keys are all masked gives NaN (softmax of a row of -inf); torch "
                "gives such a row zeros: set its weights to 0 (weights.masked_fill(~allowed, 0))")
    rows_ok = torch.allclose(got[..., ~empty, :], expected[..., ~empty, :], atol=1e-5)
    if empty.any() and rows_ok:
        return ("only the queries whose keys are all masked are wrong: they output zeros, as in "
                "torch (mask with -inf, not a large negative number, and zero their weights)")
    variants = [(_formula(q, k, v, add, 1.0), "no 1/sqrt(d_k) scaling: divide the scores Q K^T by "
                 "sqrt(d_k) = sqrt(q.shape[-1]) before the softmax"),
                (_formula(q, k, v, add, 1.0 / d), "the scores are divided by d_k; divide by "
                 "sqrt(d_k) instead"),
                (_formula(q, k, v, add, d ** -0.5, softmax_dim=-2), "softmax over the wrong axis: "
                 "each query's weights over the keys must sum to 1, so use dim=-1")]
    if causal:
        variants.append((_formula(q, k, v, _additive(mask, False, t_q, t_k, q.dtype), d ** -0.5),
                         "causal=True is ignored: query i (at position Tk - Tq + i) may not see "
                         "later keys (combine_masks applies the causal rule)"))
        variants.append((_formula(q, k, v, _additive(mask, False, t_q, t_k, q.dtype).masked_fill(
            ~_tril(t_q, t_k), float("-inf")), d ** -0.5), "with Tk > Tq the queries are the LAST "
            "Tq positions: query i sits at position Tk - Tq + i"))
    if mask is not None:
        variants.append((_formula(q, k, v, _additive(None, causal, t_q, t_k, q.dtype), d ** -0.5),
                         "the mask is ignored: a bool mask (True = may attend) sets the scores "
                         "where it is False to -inf; a float mask is added to the scores"))
        if mask.dtype == torch.bool:
            variants.append((_formula(q, k, v, _additive(~mask, causal, t_q, t_k, q.dtype),
                                      d ** -0.5), "the mask is inverted: True means 'may attend', "
                             "so fill the scores where the mask is False"))
        else:
            as_bool = _additive(mask == 0, causal, t_q, t_k, q.dtype)
            variants.append((_formula(q, k, v, as_bool, d ** -0.5), "the float mask was read as "
                             "allowed/forbidden: a float mask is ADDED to the scores (finite "
                             "values shift them, -inf forbids)"))
    return next((advice for wrong, advice in variants if matches(got, wrong)), None)


def _task_attention_cases():
    """(q, k, v, mask, causal): the checker's float64 cases, a float32 one, a query that may attend
    to nothing (bool and float masks), a float mask with finite values, causal with Tk > Tq."""
    g = torch.Generator().manual_seed(1)

    def qkv(b, h, t_q, t_k, d, dtype=torch.float64):
        return [torch.randn(b, h, t, d, generator=g, dtype=dtype) for t in (t_q, t_k, t_k)]

    cases = [(*case, False) for case in _attention_cases()]
    cases.append((*qkv(2, 2, 3, 6, 4, torch.float32), None, False))
    blocked = torch.rand(4, 5, generator=g) < 0.6                          # (Tq, Tk)
    blocked[:, 1], blocked[2] = True, False          # query 2 may attend to nothing
    cases.append((*qkv(1, 2, 4, 5, 8), blocked, False))
    additive = torch.randn(4, 6, generator=g, dtype=torch.float64)        # (Tq, Tk) float mask
    additive[torch.rand(4, 6, generator=g) < 0.3] = float("-inf")
    additive[:, 0], additive[1] = 0.5, float("-inf")  # query 1 may attend to nothing
    cases.append((*qkv(2, 1, 4, 6, 8), additive, False))
    cases.append((*qkv(1, 2, 3, 7, 8), None, True))   # causal, queries = the last 3 of 7
    window = torch.rand(3, 7, generator=g) < 0.7
    window[:, 0] = True
    cases.append((*qkv(2, 1, 3, 7, 4), window, True))
    return cases


def _check_attention_task() -> None:
    """minimt.attention.scaled_dot_product_attention against torch's fused kernel, in float64
    and float32: no mask, bool masks (True = may attend), float masks (added to the scores),
    causal with Tk > Tq, and queries that may attend to nothing (zero output, as torch). The causal
    cases use the oracle's own causal mask (torch.tril, queries last), not task 01.2's, which
    notebook 01 teaches two sections later."""
    import minimt.attention as module
    written = module.causal_mask
    module.causal_mask = lambda seq_len, kv_len, device=None: _tril(seq_len, kv_len,
                                                                     kv_len - seq_len).to(device)
    try:
        _check_attention_cases(learner("minimt.attention:scaled_dot_product_attention"))
    finally:
        module.causal_mask = written


def _check_attention_cases(attention) -> None:
    """The cases of task 01.1 on the learner's attention (see _check_attention_task)."""
    cases = _task_attention_cases()
    for i, (q, k, v, mask, causal) in enumerate(cases):
        kind = "None" if mask is None else f"{'bool' if mask.dtype == torch.bool else 'float'} " \
                                           f"{tuple(mask.shape)}"
        name = (f"task 01.1, case {i + 1} of {len(cases)} (q {tuple(q.shape)}, k {tuple(k.shape)}, "
                f"{q.dtype}, mask {kind}, causal={causal})")
        got = attention(q, k, v, mask, causal=causal)
        full = _additive(mask, causal, q.shape[-2], k.shape[-2], q.dtype)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=full if (
            mask is not None or causal) else None)
        shape_first(name, got, tuple(expected.shape), "the output has one row per query and "
                    "head_dim columns: (B, H, Tq, D) = weights (B, H, Tq, Tk) @ v (B, H, Tk, D)")
        tolerance = dict(atol=1e-8, rtol=1e-6) if q.dtype == torch.float64 else dict(atol=1e-5)
        try:
            compare(name, got, expected, **tolerance)
        except ExerciseError as err:
            advice = _task_attention_hint(got, expected, q, k, v, mask, causal)
            raise ExerciseError(f"{err}. Hint: {advice}" if advice else str(err)) from None
        out, weights = attention(q, k, v, mask, causal=causal, return_weights=True)
        shape_first(name + ", weights", weights, (*q.shape[:-1], k.shape[-2]))
        compare(name + ", weights @ v", weights @ v, expected, **tolerance)
    print(f"task 01.1: equal to torch.nn.functional.scaled_dot_product_attention on all "
          f"{len(cases)} cases (bool and float masks, causal, fully masked queries)")


TASKS = [
    task("01.2", 1, "write causal_mask (queries are the last seq_len of kv_len positions)",
         "minimt.attention:causal_mask", "notebook 01, section 3", _check_causal_mask_task),
    task("01.1", 3, "write the attention formula in scaled_dot_product_attention (masks: bool, "
         "True = may attend, or float, added to the scores; causal; a query that may attend to "
         "nothing outputs zeros)",
         "minimt.attention:scaled_dot_product_attention", "notebook 01, section 1",
         _check_attention_task),
]
