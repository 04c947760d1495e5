"""minimt's hand-written Megatron MLP equals PyTorch's own tensor parallelism: the same MLP sharded
with torch.distributed.tensor.parallel.parallelize_module (ColwiseParallel for c_fc, RowwiseParallel
for c_proj) on a gloo CPU DeviceMesh gives the same output, input gradient and weight gradients."""
import copy

import pytest
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from minimt.config import GPTConfig
from minimt.model import MLP
from minimt.parallel import launch
from minimt.parallel.tensor import ColumnParallelLinear, RowParallelLinear

CONFIG = GPTConfig(n_embd=32, n_head=4, bias=True)
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5}


def _local(t):
    """A DTensor's shard on this rank (plain tensors pass through)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _both_ways(ctx, dtype):
    torch.manual_seed(0)
    serial = MLP(CONFIG).to(dtype)
    x = torch.randn(3, 8, CONFIG.n_embd, dtype=dtype)  # (B, T, C), the same on every rank

    ours = copy.deepcopy(serial)
    ours.c_fc = ColumnParallelLinear(serial.c_fc, ctx, gather_output=False)
    ours.c_proj = RowParallelLinear(serial.c_proj, ctx, input_is_parallel=True)

    mesh = init_device_mesh("cpu", (ctx.tp_size,), mesh_dim_names=("tp",))
    theirs = parallelize_module(copy.deepcopy(serial), mesh,
                                {"c_fc": ColwiseParallel(), "c_proj": RowwiseParallel()})

    results = {}
    for name, model in (("minimt", ours), ("torch", theirs)):
        xi = x.clone().requires_grad_()
        y = model(xi)                                          # (B, T, C) on every rank
        (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum().backward()
        results[name] = {"output": _local(y).detach(), "input grad": xi.grad,
                         **{f"{p} grad": _local(dict(model.named_parameters())[p].grad)
                            for p in ("c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias")}}
    return {what: (results["minimt"][what] - results["torch"][what]).abs().max().item()
            for what in results["minimt"]} | {
        "output scale": results["torch"]["output"].abs().max().item()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_minimt_mlp_equals_parallelize_module(dtype):
    for rank, errors in enumerate(launch(_both_ways, dtype, tp=2, timeout_s=60)):
        assert errors.pop("output scale") > 1e-3  # the outputs are not trivially zero
        for what, error in errors.items():
            assert error < TOLERANCE[dtype], f"rank {rank}: {what} differs by {error:.2e}"
