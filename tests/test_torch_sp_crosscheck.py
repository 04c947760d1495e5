"""minimt's sequence parallelism equals PyTorch's: x + MLP(LayerNorm(x)) with the LayerNorm on
this rank's s/t tokens, sharded by hand (all-gather before c_fc, reduce-scatter after c_proj,
LayerNorm gradients summed over the group) and by parallelize_module (SequenceParallel,
ColwiseParallel(input_layouts=Shard(1)), RowwiseParallel(output_layouts=Shard(1))) on a gloo CPU
DeviceMesh: the same output shard, input gradient and parameter gradients."""
import copy
import functools

import torch
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel, SequenceParallel,
                                               parallelize_module)

from minimt.config import GPTConfig
from minimt.model import MLP
from minimt.parallel import launch
from minimt.parallel.tensor import (ColumnParallelLinear, RowParallelLinear,
                                    _sum_over_tensor_parallel_group)

CONFIG = GPTConfig(n_embd=32, n_head=4, bias=True)


class NormMLP(nn.Module):
    """Half a transformer block: x + MLP(LayerNorm(x))."""

    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(CONFIG.n_embd)
        self.mlp = MLP(CONFIG)

    def forward(self, x):                                      # (B, T/tp, C)
        return x + self.mlp(self.ln(x))


def _local(t):
    """A DTensor's shard on this rank (plain tensors pass through)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _grad(param):
    """This rank's gradient; DTensor leaves a replicated parameter's gradient partial (each rank
    holds its tokens' part) until it is redistributed to the parameter's placement."""
    if hasattr(param.grad, "redistribute"):
        return param.grad.redistribute(param.grad.device_mesh, param.placements).to_local()
    return param.grad


def _both_ways(ctx):
    torch.manual_seed(0)
    serial = NormMLP()
    with torch.no_grad():
        serial.ln.weight.uniform_(0.5, 1.5)
        serial.ln.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 8, CONFIG.n_embd)                      # (B, T, C), the same on every rank
    local = x.chunk(ctx.tp_size, dim=1)[ctx.tp_rank]          # (B, T/tp, C)

    ours = copy.deepcopy(serial)
    ours.mlp.c_fc = ColumnParallelLinear(serial.mlp.c_fc, ctx, gather_output=False,
                                         sequence_parallel=True)
    ours.mlp.c_proj = RowParallelLinear(serial.mlp.c_proj, ctx, input_is_parallel=True,
                                        sequence_parallel=True)
    for p in (ours.ln.weight, ours.ln.bias, ours.mlp.c_proj.bias):
        p.register_hook(functools.partial(_sum_over_tensor_parallel_group, ctx=ctx))

    mesh = init_device_mesh("cpu", (ctx.tp_size,), mesh_dim_names=("tp",))
    theirs = parallelize_module(copy.deepcopy(serial), mesh, {
        "ln": SequenceParallel(),
        "mlp.c_fc": ColwiseParallel(input_layouts=Shard(1)),
        "mlp.c_proj": RowwiseParallel(output_layouts=Shard(1))})

    results = {}
    for name, model in (("minimt", ours), ("torch", theirs)):
        xi = local.clone().requires_grad_()
        y = _local(model(xi))                                  # (B, T/tp, C)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results[name] = {"output": y.detach(), "input grad": xi.grad} | {
            f"{n} grad": _grad(p) for n, p in model.named_parameters()}
    return {what: (results["minimt"][what] - results["torch"][what]).abs().max().item()
            for what in results["minimt"]}


def test_minimt_sequence_parallel_equals_parallelize_module():
    for rank, errors in enumerate(launch(_both_ways, tp=2, timeout_s=60)):
        assert len(errors) == 8  # output, input grad, ln weight/bias, c_fc and c_proj weight/bias
        for what, error in errors.items():
            assert error < 1e-5, f"rank {rank}: {what} differs by {error:.2e}"
