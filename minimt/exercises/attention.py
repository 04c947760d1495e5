"""Checkers for 01_attention: the prefix-LM and dilated masks, ALiBi attention, and the tasks
(attention from the formula, the causal mask). Oracles: torch's fused kernel, masks built with
torch.tril or one pair at a time, ALiBi attention one query row at a time."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .core import ExerciseError, compare, learner, matches, run_cases, shape_first, task


def _tril(rows: int, cols: int, diagonal: int = 0) -> torch.Tensor:
    """(rows, cols) bool, True on and below the given diagonal (torch.tril of ones)."""
    return torch.ones(rows, cols, dtype=torch.bool).tril(diagonal)


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


def _alibi_oracle(q, k, v, slopes, causal=True):
    """Causal attention with ALiBi's bias, one query row at a time: the weights of query i over
    keys 0..i are exp(s_j) / sum exp(s), s_j = q_i . k_j / sqrt(d) - slope_h (i - j)."""
    out = torch.zeros_like(q)                                               # (B, H, T, D)
    t = q.shape[2]
    for h in range(q.shape[1]):
        for i in range(t):
            keys = i + 1 if causal else t                     # causal=False: a learner's mistake
            distance = i - torch.arange(keys, dtype=q.dtype)                # (keys,): i - j
            scores = (k[:, h, :keys] @ q[:, h, i, :, None])[..., 0] / q.shape[-1] ** 0.5
            weights = torch.exp(scores - slopes[h] * distance)              # (B, keys)
            weights = weights / weights.sum(-1, keepdim=True)
            out[:, h, i] = (weights[..., None] * v[:, h, :keys]).sum(1)
    return out


def _alibi_cases():
    """Seeded float64 cases; slopes as ALiBi's geometric sequence 2^(-8h/H), and one custom."""
    g = torch.Generator().manual_seed(1)

    def qkv(b, h, t, d):
        return [torch.randn(b, h, t, d, generator=g, dtype=torch.float64) for _ in range(3)]

    def geometric(h):
        return torch.tensor([2.0 ** (-8 * (i + 1) / h) for i in range(h)], dtype=torch.float64)

    return [(*qkv(1, 1, 4, 8), torch.tensor([0.0], dtype=torch.float64)),
            (*qkv(2, 4, 6, 16), geometric(4)),
            (*qkv(1, 2, 7, 4), torch.tensor([1.5, 0.25], dtype=torch.float64)),
            (*qkv(2, 8, 5, 8), geometric(8))]


def check_alibi_attention(fn: Callable) -> None:
    """fn(q, k, v, slopes) -> causal attention whose scores carry ALiBi's bias -slope_h (i - j)
    (Press et al. 2022), q, k, v (B, H, T, D), slopes (H,). Oracle: a loop over query rows."""
    def hint(got, q, k, v, slopes):
        variants = [(_alibi_oracle(q, k, v, -slopes), "the bias has the wrong sign: a key further "
                     "back must score LOWER, subtract slope_h * (i - j)"),
                    (_alibi_oracle(q, k, v, 0 * slopes), "no bias: add -slope_h * (i - j) to each "
                     "score, with slopes[h] for head h (slopes[:, None, None] broadcasts)"),
                    (_alibi_oracle(q * q.shape[-1] ** 0.5, k, v, slopes), "no 1/sqrt(d_k) "
                     "scaling of q k^T (the bias is added after the scaling)"),
                    (_alibi_oracle(q, k, v, slopes, causal=False), "no causal mask: query i may "
                     "attend to keys j <= i only (set the other scores to -inf before the "
                     "softmax)")]
        for wrong, advice in variants:
            if matches(got, wrong):
                return advice
        return None

    run_cases("check_alibi_attention", fn, _alibi_oracle, _alibi_cases(), hint,
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


def check_prefix_lm_mask(fn: Callable) -> None:
    """fn(T, P) -> (T, T) bool: a prefix LM's mask (T5's, Raffel et al. 2020): the first P positions
    see each other both ways, every later query i sees keys j <= i. Oracle: one pair at a time."""
    def prefix_lm(seq_len, prefix_len):
        return torch.tensor([[j <= i or j < prefix_len for j in range(seq_len)]
                             for i in range(seq_len)], dtype=torch.bool).view(seq_len, seq_len)

    def hint(got, seq_len, prefix_len):
        causal = prefix_lm(seq_len, 0)
        return _mask_hint(got, [
            (causal, "this is the causal mask: inside the prefix a query also sees the LATER "
             "prefix positions (j < P)"),
            (causal | prefix_lm(seq_len, seq_len) & (torch.arange(seq_len) < prefix_len)[:, None],
             "a prefix query must not see past the prefix: only keys j < P are added"),
            (prefix_lm(seq_len, prefix_len + 1), "one position too many: the prefix is positions "
             "0..P-1"),
            (prefix_lm(seq_len, prefix_len).T, "transposed: rows are queries i, columns keys j"),
        ])

    cases = [(1, 0), (4, 0), (5, 2), (6, 6), (9, 4), (7, 1)]
    run_cases("check_prefix_lm_mask", _bool_mask("check_prefix_lm_mask", fn), prefix_lm, cases,
              hint)


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
