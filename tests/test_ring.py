"""Collectives on real gloo ranks: reduce-scatter and all-gather halves of an all-reduce, and the
ring algorithm written with counted point-to-point messages, whose bytes per rank equal
2(n-1)/n of the tensor for an all-reduce and (n-1)/n for each half."""
import pytest
import torch

from minimt.parallel import (CommCounter, all_gather, all_reduce, launch, reduce_scatter,
                             ring_all_gather, ring_all_reduce, ring_bytes_per_rank,
                             ring_reduce_scatter)

N = 24  # elements, divisible by 2, 3 and 4


def data(rank):
    return torch.randn(N, generator=torch.Generator().manual_seed(rank))


def _collectives(ctx):
    x = data(ctx.dp_rank)
    out = {"rs": reduce_scatter(x.clone(), ctx, "dp"), "ar": all_reduce(x.clone(), ctx, "dp")}
    out["ag"] = all_gather(out["rs"], ctx, "dp", dim=0)
    with CommCounter() as counter:
        out["ring_rs"] = ring_reduce_scatter(x, ctx, "dp")
    out["rs_sent"] = counter.bytes(kind="send", group="dp")
    with CommCounter() as counter:
        out["ring_ag"] = ring_all_gather(out["ring_rs"], ctx, "dp")
    out["ag_sent"] = counter.bytes(kind="send", group="dp")
    with CommCounter() as counter:
        out["ring_ar"] = ring_all_reduce(x, ctx, "dp")
    out["ar_sent"] = counter.bytes(kind="send", group="dp")
    with CommCounter() as counter:
        all_reduce(x.clone(), ctx, "dp")
    out["formula_ar"] = counter.ring_bytes_per_rank(ctx)
    return out


@pytest.mark.parametrize("n", [2, 3, 4])
def test_reduce_scatter_plus_all_gather_is_an_all_reduce_and_ring_bytes_match(n):
    total = sum(data(r) for r in range(n))
    k = N // n
    for r, out in enumerate(launch(_collectives, dp=n, timeout_s=30)):
        assert torch.allclose(out["rs"], total[r * k:(r + 1) * k], atol=1e-6)
        assert torch.allclose(out["ag"], total, atol=1e-6)
        assert torch.allclose(out["ar"], total, atol=1e-6)
        assert torch.allclose(out["ring_rs"], total[r * k:(r + 1) * k], atol=1e-6)
        assert torch.allclose(out["ring_ag"], total, atol=1e-6)
        assert torch.allclose(out["ring_ar"], total, atol=1e-6)
        assert out["rs_sent"] == out["ag_sent"] == ring_bytes_per_rank("reduce_scatter", 4 * N, n)
        assert out["rs_sent"] == (n - 1) * 4 * N // n
        assert out["ar_sent"] == 2 * (n - 1) * 4 * N // n == out["formula_ar"]


def test_ring_formula_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="ring formula"):
        ring_bytes_per_rank("send", 4, 2)
