"""The communication primitives on real gloo ranks: f, g, gather and scatter give the values and
gradients of their definitions (Megatron-LM, arXiv 1909.08053), compose into a tensor-parallel MLP
equal to the serial one, are the identity at tp=1; p2p messages reach the right pipeline stage;
the CommCounter records exactly what was sent."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from minimt.parallel import (CommCounter, CommRecord, ParallelContext, all_gather, all_reduce,
                             copy_to_tensor_model_parallel_region,
                             gather_from_tensor_model_parallel_region, isend, launch, recv,
                             recv_backward, recv_forward, reduce_from_tensor_model_parallel_region,
                             scatter_to_tensor_model_parallel_region, send_backward,
                             send_backward_recv_forward, send_forward, send_forward_recv_backward)

B, T, C = 2, 3, 8  # C divisible by tp = 2 and 4
ATOL = 1e-6


def tensor(seed, *shape):
    """The same numbers on every rank for the same seed (and in the test process)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def record(kind, numel, phase, group="tp"):
    return CommRecord(kind, group, numel, 4 * numel, phase)


def _primitives(ctx):
    r, tp = ctx.tp_rank, ctx.tp_size
    out = {}
    with CommCounter() as counter:  # f: identity forward, all-reduce backward
        x = tensor(0, B, T, C).requires_grad_()
        y = copy_to_tensor_model_parallel_region(x, ctx)
        (y * tensor(100 + r, B, T, C)).sum().backward()
    out["f"] = (y.detach(), x.grad, counter.records)
    with CommCounter() as counter:  # g: all-reduce forward, identity backward
        x = tensor(200 + r, B, T, C).requires_grad_()
        y = reduce_from_tensor_model_parallel_region(x, ctx)
        (y * tensor(300 + r, B, T, C)).sum().backward()
    out["g"] = (y.detach(), x.grad, counter.records)
    with CommCounter() as counter:  # gather: all-gather forward, split backward
        x = tensor(400 + r, B, T, C // tp).requires_grad_()
        y = gather_from_tensor_model_parallel_region(x.transpose(0, 1), ctx)  # non-contiguous in
        (y * tensor(500, T, B, C)).sum().backward()
    out["gather"] = (y.detach(), x.grad, counter.records)
    with CommCounter() as counter:  # scatter: split forward, all-gather backward
        x = tensor(600, B, T, C).requires_grad_()
        y = scatter_to_tensor_model_parallel_region(x, ctx)
        (y * tensor(700 + r, B, T, C // tp)).sum().backward()
    out["scatter"] = (y.detach(), x.grad, counter.records)
    try:
        scatter_to_tensor_model_parallel_region(torch.ones(2, 2 * tp + 1), ctx)
    except ValueError as error:
        out["indivisible"] = str(error)
    return out


@pytest.mark.parametrize("tp", [2, 4])
def test_primitives_match_their_definitions(tp):
    n, w = B * T * C, C // tp
    for r, out in enumerate(launch(_primitives, tp=tp, timeout_s=30)):
        y, grad, records = out["f"]
        assert torch.equal(y, tensor(0, B, T, C))
        assert torch.allclose(grad, sum(tensor(100 + s, B, T, C) for s in range(tp)), atol=ATOL)
        assert records == [record("all_reduce", n, "backward")]

        y, grad, records = out["g"]
        assert torch.allclose(y, sum(tensor(200 + s, B, T, C) for s in range(tp)), atol=ATOL)
        assert torch.equal(grad, tensor(300 + r, B, T, C))
        assert records == [record("all_reduce", n, "forward")]

        y, grad, records = out["gather"]
        parts = [tensor(400 + s, B, T, w).transpose(0, 1) for s in range(tp)]
        assert torch.equal(y, torch.cat(parts, dim=-1))
        assert torch.equal(grad, tensor(500, T, B, C)[..., r * w:(r + 1) * w].transpose(0, 1))
        assert records == [record("all_gather", n, "forward")]

        y, grad, records = out["scatter"]
        assert torch.equal(y, tensor(600, B, T, C)[..., r * w:(r + 1) * w])
        assert torch.equal(grad, torch.cat([tensor(700 + s, B, T, w) for s in range(tp)], dim=-1))
        assert records == [record("all_gather", n, "backward")]

        assert out["indivisible"].startswith(
            f"last dimension={2 * tp + 1} is not divisible by tensor-parallel size {tp}")


def _parallel_mlp(ctx):
    """Megatron's MLP: f, column-parallel A, GELU, row-parallel B, g."""
    r, hidden = ctx.tp_rank, 4 * C // ctx.tp_size
    x = tensor(0, B, T, C).requires_grad_()
    a = tensor(1, C, 4 * C)[:, r * hidden:(r + 1) * hidden].clone().requires_grad_()
    b = tensor(2, 4 * C, C)[r * hidden:(r + 1) * hidden].clone().requires_grad_()
    with CommCounter() as forward:
        h = F.gelu(copy_to_tensor_model_parallel_region(x, ctx) @ a)  # (B, T, 4C/tp)
        y = reduce_from_tensor_model_parallel_region(h @ b, ctx)      # (B, T, C)
    with CommCounter() as backward:
        (y * tensor(3, B, T, C)).sum().backward()
    return y.detach(), x.grad, a.grad, b.grad, forward.records, backward.records


@pytest.mark.parametrize("tp", [2, 4])
def test_f_and_g_make_a_tensor_parallel_mlp_equal_to_serial(tp):
    x, a, b = tensor(0, B, T, C).requires_grad_(), tensor(1, C, 4 * C).requires_grad_(), \
        tensor(2, 4 * C, C).requires_grad_()
    y = F.gelu(x @ a) @ b
    (y * tensor(3, B, T, C)).sum().backward()
    hidden = 4 * C // tp
    for r, (y_p, x_grad, a_grad, b_grad, fwd, bwd) in enumerate(launch(_parallel_mlp, tp=tp)):
        cols = slice(r * hidden, (r + 1) * hidden)
        assert torch.allclose(y_p, y.detach(), atol=1e-5)
        assert torch.allclose(x_grad, x.grad, atol=1e-5)
        assert torch.allclose(a_grad, a.grad[:, cols], atol=1e-5)
        assert torch.allclose(b_grad, b.grad[cols], atol=1e-5)
        assert fwd == [record("all_reduce", B * T * C, "forward")]  # g only
        assert bwd == [record("all_reduce", B * T * C, "backward")]  # f only


def test_tp_1_is_the_identity_without_communication():
    ctx = ParallelContext()
    x = tensor(0, B, T, C).requires_grad_()
    with CommCounter() as counter:
        for primitive in (copy_to_tensor_model_parallel_region,
                          reduce_from_tensor_model_parallel_region,
                          gather_from_tensor_model_parallel_region,
                          scatter_to_tensor_model_parallel_region):
            assert primitive(x, ctx) is x
        upstream = tensor(1, B, T, C)
        (copy_to_tensor_model_parallel_region(x, ctx) * upstream).sum().backward()
        assert all_reduce(upstream, ctx, "dp") is upstream
        assert all_gather(upstream, ctx, "world") is upstream
        assert recv_forward((2,), ctx) is None and recv_backward((2,), ctx) is None
        send_forward(upstream, ctx)  # no next stage: nothing to do
        send_backward(upstream, ctx)
    assert torch.equal(x.grad, upstream)
    assert counter.records == [] and counter.count() == 0
    with pytest.raises(ValueError, match="unknown group 'model'"):
        all_reduce(upstream, ctx, "model")


def _collectives_and_counters(ctx):
    with CommCounter() as outer:
        value = torch.tensor([float(ctx.rank)])
        all_reduce(value, ctx, "dp", op=dist.ReduceOp.MAX)
        with CommCounter() as inner:
            rows = all_gather(torch.full((1, 2), float(ctx.rank)), ctx, "tp", dim=0)  # (tp, 2)
    return value.item(), rows, outer.records, inner.records, outer.summary(), \
        (outer.count(), outer.count(group="dp"), outer.count(kind="all_gather", phase="forward"),
         outer.numel(group="tp"), outer.bytes(), outer.bytes(kind="send"))


def test_named_groups_and_nested_counters():
    results = launch(_collectives_and_counters, tp=2, dp=2, timeout_s=30)
    for rank, (maximum, rows, outer, inner, summary, numbers) in enumerate(results):
        tp_ranks = [rank - rank % 2, rank - rank % 2 + 1]
        assert maximum == max(rank % 2, rank % 2 + 2)  # dp group {r, r + 2}
        assert torch.equal(rows, torch.tensor([[float(tp_ranks[0])] * 2, [float(tp_ranks[1])] * 2]))
        assert outer == [CommRecord("all_reduce", "dp", 1, 4, None),
                         CommRecord("all_gather", "tp", 4, 16, None)]
        assert inner == outer[1:]
        assert numbers == (2, 1, 0, 4, 20, 0)  # all_gather had phase None, not "forward"
        assert summary.splitlines()[1].split() == ["dp", "all_reduce", "-", "1", "1", "4"]
        assert summary.splitlines()[2].split() == ["tp", "all_gather", "-", "1", "4", "16"]


def _pipeline_messages(ctx):
    """Stage 0 (ranks 0, 1) and stage 1 (ranks 2, 3) exchange activations and gradients."""
    shape, mine = (2, 3), torch.full((2, 3), float(ctx.rank))
    with CommCounter() as counter:
        if ctx.is_first_stage:
            send_forward(mine, ctx)
            grad = recv_backward(shape, ctx)
            paired = send_forward_recv_backward(mine + 10, shape, ctx)  # both sides send at once
            works = [isend(mine + 7, ctx.next_rank, ctx, tag=7),
                     isend(mine + 8, ctx.next_rank, ctx, tag=8)]
            for work in works:
                work.wait()
            got = (recv_forward(shape, ctx), grad, paired, None)
        else:
            act = recv_forward(shape, ctx)
            send_backward(2 * act, ctx)
            paired = send_backward_recv_forward(3 * act, shape, ctx)
            eight = recv(shape, torch.float32, ctx.prev_rank, ctx, tag=8)  # out of order by tag
            seven = recv(shape, torch.float32, ctx.prev_rank, ctx, tag=7)
            got = (recv_backward(shape, ctx), act, paired, (seven, eight))
    return got, [(r.kind, r.phase, r.numel, r.group) for r in counter.records]


def test_point_to_point_between_pipeline_stages():
    for rank, (got, records) in enumerate(launch(_pipeline_messages, tp=2, pp=2, timeout_s=10)):
        nothing, received, paired, tagged = got
        assert nothing is None  # no previous stage on stage 0, no next stage on stage 1
        source = float(rank % 2)  # stage 0 rank of this pair (tp rank r talks to rank r + 2)
        if rank < 2:
            assert torch.equal(received, torch.full((2, 3), 2 * source))  # gradient from stage 1
            assert torch.equal(paired, torch.full((2, 3), 3 * source))
            assert records == [("send", "forward", 6, "pp"), ("recv", "backward", 6, "pp"),
                               ("send", "forward", 6, "pp"), ("recv", "backward", 6, "pp"),
                               ("send", None, 6, "pp"), ("send", None, 6, "pp")]
        else:
            assert torch.equal(received, torch.full((2, 3), source))
            assert torch.equal(paired, torch.full((2, 3), source + 10))
            assert torch.equal(tagged[0], torch.full((2, 3), source + 7))
            assert torch.equal(tagged[1], torch.full((2, 3), source + 8))
            assert records == [("recv", "forward", 6, "pp"), ("send", "backward", 6, "pp"),
                               ("send", "backward", 6, "pp"), ("recv", "forward", 6, "pp"),
                               ("recv", None, 6, "pp"), ("recv", None, 6, "pp")]
