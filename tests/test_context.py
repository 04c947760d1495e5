"""ParallelContext and the mesh layout: Megatron's rank order (tp adjacent), every group built and
usable on real gloo ranks, a serial context without processes, and errors that say what to change."""
import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

from minimt.parallel import ParallelContext, divide, ensure_divisibility, launch, mesh_ranks, rank_coords


def test_mesh_ranks_small_mesh_by_hand():
    assert mesh_ranks(tp=2, pp=2, dp=1) == {"tp": [[0, 1], [2, 3]], "pp": [[0, 2], [1, 3]],
                                            "dp": [[0], [1], [2], [3]]}
    assert mesh_ranks(tp=2, pp=1, dp=2) == {"tp": [[0, 1], [2, 3]], "pp": [[0], [1], [2], [3]],
                                            "dp": [[0, 2], [1, 3]]}
    assert mesh_ranks() == {"tp": [[0]], "pp": [[0]], "dp": [[0]]}


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))
def test_mesh_ranks_follow_megatron_order(tp, pp, dp):
    layout = mesh_ranks(tp, pp, dp)
    world = tp * pp * dp
    for axis, size in (("tp", tp), ("pp", pp), ("dp", dp)):
        groups = layout[axis]
        assert len(groups) == world // size and all(len(g) == size for g in groups)
        assert sorted(r for g in groups for r in g) == list(range(world))  # a partition
    for rank in range(world):
        d, p, t = rank_coords(rank, tp, pp, dp)
        assert rank == d * pp * tp + p * tp + t
        assert layout["tp"][d * pp + p][t] == rank  # tp neighbours are adjacent ranks
        assert layout["pp"][d * tp + t][p] == rank
        assert layout["dp"][p * tp + t][d] == rank


@pytest.mark.parametrize("sizes, message", [
    (dict(tp=0), "tp=0 must be a positive integer"),
    (dict(pp=-1), "pp=-1 must be a positive integer"),
    (dict(dp=1.5), "dp=1.5 must be a positive integer"),
    (dict(tp=True), "tp=True must be a positive integer"),
])
def test_bad_sizes_say_what_to_change(sizes, message):
    with pytest.raises(ValueError, match=message):
        mesh_ranks(**sizes)
    with pytest.raises(ValueError, match=message):
        ParallelContext(**sizes)


def test_rank_outside_mesh():
    with pytest.raises(ValueError, match="rank=4 is outside the mesh of tp\\*pp\\*dp = 4 ranks"):
        rank_coords(4, 2, 2, 1)


def test_divide_and_its_message():
    assert divide(12, 4, "n_head", "tensor-parallel size") == 3
    with pytest.raises(ValueError, match="^n_head=6 is not divisible by tensor-parallel size 4; "
                                         "sizes that divide 6: \\[1, 2, 3, 6\\]$"):
        ensure_divisibility(6, 4, "n_head", "tensor-parallel size")
    with pytest.raises(ValueError, match="n_layer=5 is not divisible by 2"):
        divide(5, 2, "n_layer")
    ensure_divisibility(8, 8)  # divisible: no error


def test_serial_context_needs_no_processes():
    ctx = ParallelContext()
    assert (ctx.rank, ctx.world_size, ctx.tp_size, ctx.pp_size, ctx.dp_size) == (0, 1, 1, 1, 1)
    assert (ctx.tp_rank, ctx.pp_rank, ctx.dp_rank) == (0, 0, 0)
    assert ctx.tp_group is None and ctx.pp_group is None and ctx.dp_group is None
    assert ctx.is_first_stage and ctx.is_last_stage
    assert ctx.next_rank is None and ctx.prev_rank is None
    assert ctx.tp_ranks == ctx.pp_ranks == ctx.dp_ranks == [0]
    assert ctx.device == torch.device("cpu") and ctx.size("world") == 1
    with pytest.raises(ValueError, match="unknown group 'ep'"):
        ctx.group("ep")


def test_multi_rank_context_needs_groups():
    with pytest.raises(ValueError, match="needs process groups.*from_distributed"):
        ParallelContext(tp=2)


def test_from_distributed_needs_an_initialised_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="not initialised"):
        ParallelContext.from_distributed(tp=1)


def _describe(ctx):
    """Everything a rank knows about its place, plus one all-reduce per group to prove it works."""
    sums = {}
    for axis in ("tp", "pp", "dp"):
        value = torch.tensor([float(ctx.rank)])
        dist.all_reduce(value, group=ctx.group(axis))
        sums[axis] = value.item()
    return dict(rank=ctx.rank, world=ctx.world_size, coords=(ctx.dp_rank, ctx.pp_rank, ctx.tp_rank),
                ranks={a: getattr(ctx, f"{a}_ranks") for a in ("tp", "pp", "dp")},
                group_sizes={a: dist.get_world_size(ctx.group(a)) for a in ("tp", "pp", "dp")},
                sums=sums, first=ctx.is_first_stage, last=ctx.is_last_stage,
                next=ctx.next_rank, prev=ctx.prev_rank, backend=ctx.backend)


def test_every_group_of_a_2x2x2_mesh_on_real_ranks():
    tp, pp, dp = 2, 2, 2
    layout = mesh_ranks(tp, pp, dp)
    for rank, info in enumerate(launch(_describe, tp=tp, pp=pp, dp=dp, timeout_s=30)):
        d, p, t = rank_coords(rank, tp, pp, dp)
        assert info["rank"] == rank and info["world"] == 8 and info["coords"] == (d, p, t)
        assert info["backend"] == "gloo"
        for axis in ("tp", "pp", "dp"):
            mine = next(g for g in layout[axis] if rank in g)
            assert info["ranks"][axis] == mine
            assert info["group_sizes"][axis] == 2
            assert info["sums"][axis] == sum(mine), f"all_reduce over {axis} on rank {rank}"
        assert info["first"] == (p == 0) and info["last"] == (p == pp - 1)
        assert info["next"] == (rank + tp if p < pp - 1 else None)
        assert info["prev"] == (rank - tp if p > 0 else None)
