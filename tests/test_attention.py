"""Attention from the formula equals torch's fused kernel; masks and positions behave as defined."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minimt.attention import (KVCache, MultiHeadAttention, causal_mask, local_mask,
                              scaled_dot_product_attention, sinusoidal_positions)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), heads=st.integers(1, 4), tq=st.integers(1, 9),
       tk=st.integers(1, 9), dim=st.integers(1, 16), kind=st.sampled_from(
           ["none", "causal", "bool", "bool_broadcast", "causal_and_bool", "float",
            "causal_and_float"]),
       seed=st.integers(0, 2**16))
def test_equals_torch_sdpa_in_float64(batch, heads, tq, tk, dim, kind, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, tq, dim, generator=g, dtype=torch.float64)
    k = torch.randn(batch, heads, tk, dim, generator=g, dtype=torch.float64)
    v = torch.randn(batch, heads, tk, dim, generator=g, dtype=torch.float64)
    mask, causal = None, False
    if kind in ("bool", "causal_and_bool"):
        mask = torch.rand(batch, heads, tq, tk, generator=g) > 0.3
    if kind == "bool_broadcast":
        mask = torch.rand(tq, tk, generator=g) > 0.3  # broadcast over batch and heads
    if kind in ("float", "causal_and_float"):  # torch's additive mask: a bias, -inf forbids
        mask = torch.randn(tq, tk, generator=g, dtype=torch.float64)
        mask = mask.masked_fill(torch.rand(tq, tk, generator=g) < 0.3, float("-inf"))
    if kind in ("causal", "causal_and_bool", "causal_and_float"):
        causal = True
    ours = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
    if causal:  # torch's is_causal is top-left aligned; give it our bottom-right mask explicitly
        full = causal_mask(tq, tk) if mask is None else (
            mask & causal_mask(tq, tk) if mask.dtype == torch.bool
            else mask.masked_fill(~causal_mask(tq, tk), float("-inf")))
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=full)
    else:
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_weights_are_a_distribution_and_respect_the_mask():
    q = k = v = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    out, w = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    assert w.shape == (2, 3, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
    assert (w.masked_select(~causal_mask(5)) == 0).all()
    torch.testing.assert_close(out, w @ v)


def test_masks():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())
    # 2 new queries after 3 cached keys: positions 3 and 4 see keys 0..3 and 0..4
    assert torch.equal(causal_mask(2, 5), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool())
    w = local_mask(5, window=2)
    assert torch.equal(w, torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0],
                                        [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]).bool())
    assert torch.equal(local_mask(6, window=6), causal_mask(6))


def test_bad_inputs_get_clear_errors():
    x = torch.randn(2, 5, 4)
    try:
        scaled_dot_product_attention(x, x, x)
    except ValueError as e:
        assert "4-D (batch, heads, seq, head_dim)" in str(e)
    else:
        raise AssertionError("3-D input was accepted")
    q, kv = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8)  # grouped-query shapes
    try:
        scaled_dot_product_attention(q, kv, kv)
    except ValueError as e:
        assert "grouped-query" in str(e) and "repeat_interleave(4 // 2, dim=1)" in str(e)
    else:
        raise AssertionError("fewer key/value heads than query heads was accepted")
    try:
        local_mask(4, window=0)
    except ValueError as e:
        assert "window=0" in str(e)
    else:
        raise AssertionError("window 0 was accepted")


def attention_errors(dtype, seed):
    """Max error against fp64 (of the same rounded inputs) of ours and of torch's fused kernel, on
    (2, 4, 64, 64) causal inputs scaled x3 (peaked softmax rows: where 16 bits hurt most)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (3 * torch.randn(2, 4, 64, 64, generator=g) for _ in range(3))
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    ours = scaled_dot_product_attention(q, k, v, causal=True)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert ours.dtype == theirs.dtype == dtype
    return ((ours.double() - exact).abs().max().item(),
            (theirs.double() - exact).abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_16_bit_error_is_within_1_5x_of_torchs(dtype, seed):
    """Scores, softmax and its normalisation run in fp32: a 16-bit softmax was 7x torch's error."""
    ours, theirs = attention_errors(dtype, seed)
    assert ours <= 1.5 * theirs, f"{dtype}: error {ours:.4f}, torch's {theirs:.4f}"


def test_sinusoidal_positions_follow_the_formula():
    pe = sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16)
    p, i = 7, 3
    angle = p / 10000 ** (2 * i / 16)
    assert math.isclose(pe[p, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
    assert math.isclose(pe[p, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)


def test_multi_head_attention_fused_path_equals_formula_path():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, bias=True).double().eval()
    x = torch.randn(3, 10, 32, dtype=torch.float64)
    fused = mha(x)
    mha.fused = False
    formula = mha(x)
    torch.testing.assert_close(fused, formula, atol=1e-10, rtol=0)
    y, w = mha(x, need_weights=True)
    assert w.shape == (3, 4, 10, 10)
    torch.testing.assert_close(y, fused, atol=1e-10, rtol=0)


def test_heads_are_independent_concatenated_then_projected():
    torch.manual_seed(1)
    C, H = 12, 3
    mha = MultiHeadAttention(C, H).double()
    x = torch.randn(2, 6, C, dtype=torch.float64)
    wq, wk, wv = mha.c_attn.weight.split(C)  # each (C, C): rows are output channels
    heads = []
    for h in range(H):
        rows = slice(h * C // H, (h + 1) * C // H)
        q, k, v = x @ wq[rows].T, x @ wk[rows].T, x @ wv[rows].T           # (B, T, D)
        s = (q @ k.transpose(1, 2)) / math.sqrt(C // H)
        s = s.masked_fill(~causal_mask(6), float("-inf"))
        heads.append(torch.softmax(s, -1) @ v)
    expected = torch.cat(heads, dim=-1) @ mha.c_proj.weight.T
    torch.testing.assert_close(mha(x), expected, atol=1e-10, rtol=0)


def test_kv_cache_decoding_equals_full_forward():
    torch.manual_seed(2)
    mha = MultiHeadAttention(16, 2).double().eval()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    full = mha(x)
    cache = KVCache()
    prefix = mha(x[:, :4], kv_cache=cache)        # several tokens at once
    steps = [mha(x[:, t:t + 1], kv_cache=cache) for t in range(4, 7)]  # then one at a time
    assert len(cache) == 7
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, atol=1e-10, rtol=0)
    cache2 = KVCache()
    mha(x[:, :3], kv_cache=cache2)
    two = mha(x[:, 3:5], kv_cache=cache2)          # two new queries need the offset causal mask
    torch.testing.assert_close(two, full[:, 3:5], atol=1e-10, rtol=0)
