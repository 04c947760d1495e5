"""ZeRO-2 and ZeRO-3 (minimt.parallel.fsdp) on gloo ranks: the same weights as serial AdamW and as
PyTorch's fully_shard (FSDP2), the bytes per step (2 Psi, 3 Psi) and the bytes per rank of weights,
gradients and optimizer state against Rajbhandari et al.'s formulas, and misuse refused."""
import copy

import pytest
import torch

from minimt import GPT, GPTConfig
from minimt.parallel import CommCounter, DistributedOptimizer, ParallelContext, launch
from minimt.parallel.checkpoint import full_state_dict, load_checkpoint, save_checkpoint
from minimt.parallel.fsdp import FullyShardedDataParallel
from minimt.parallel.sharded_adamw import ShardedAdamW, training_state_bytes
from minimt.precision import MixedPrecisionOptimizer
from minimt.scale import zero_state_bytes

# every unit's parameter count (root 2624, block 12768) divides by 2 and 4: no padding
CONFIG = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=True)
BATCH, STEPS, LR = 4, 3, 1e-3


def _batches():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, CONFIG.vocab_size, (BATCH, CONFIG.block_size), generator=g)
            for _ in range(STEPS)]


def _rows(x, ctx):
    rows = BATCH // ctx.dp_size
    return x[ctx.dp_rank * rows:(ctx.dp_rank + 1) * rows]             # (B/dp, T)


def _serial_weights() -> dict:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    for x in _batches():
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    return {n: p.detach() for n, p in model.named_parameters()}


def _sharded_weights(ctx, stage, dtype, prefetch=1):
    torch.manual_seed(0)
    model = GPT(CONFIG).to(dtype)
    fsdp = FullyShardedDataParallel(model, ctx, stage=stage, prefetch=prefetch)
    opt = ShardedAdamW(fsdp, lr=LR)
    for x in _batches():
        x = _rows(x, ctx)
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    return fsdp.full_state_dict()


def _all_cases(ctx):
    return {(stage, str(dtype)): _sharded_weights(ctx, stage, dtype, prefetch=stage - 1)
            for stage in (2, 3) for dtype in (torch.float32, torch.bfloat16)}


@pytest.mark.parametrize("dp", [2, 4])
def test_zero2_and_zero3_equal_serial_adamw(dp):
    serial = _serial_weights()
    # fp32: summation order only. bf16: 16-bit weights and gradients in forward and backward
    # (fp32 master and moments), against the fp32 serial model; Adam moves a weight by <= lr a step
    tolerance = {"torch.float32": 1e-5, "torch.bfloat16": 2 * LR * STEPS}
    for rank, cases in enumerate(launch(_all_cases, dp=dp, timeout_s=90)):
        for (stage, dtype), weights in cases.items():
            assert weights.keys() == serial.keys()
            error = max((weights[n] - serial[n]).abs().max().item() for n in serial)
            assert error < tolerance[dtype], f"dp={dp} rank {rank} ZeRO-{stage} {dtype}: {error}"


def _with_fully_shard(ctx):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    model = GPT(CONFIG)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    mesh = init_device_mesh("cpu", (ctx.dp_size,))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    for x in _batches():
        x = _rows(x, ctx)
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    theirs = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
    ours = _sharded_weights(ctx, 3, torch.float32)
    moved = max((ours[n] - initial[n]).abs().max().item() for n in theirs)
    return max((ours[n] - theirs[n]).abs().max().item() for n in theirs), moved


def test_zero3_equals_torch_fully_shard():
    # measured: equal to the bit (the same AdamW arithmetic, a sum of 2 halved gradients)
    for rank, (error, moved) in enumerate(launch(_with_fully_shard, dp=2, timeout_s=90)):
        assert error < 1e-6, f"rank {rank}: weights differ from fully_shard's by {error:.2e}"
        assert moved > STEPS * LR / 2  # the weights really trained


def _bytes(ctx):
    """Per ZeRO stage, bf16: bytes per step per (kind, phase), and bytes per rank measured from
    the storages after a backward, with the optimizer state already built."""
    out = {}
    for stage in (0, 1, 2, 3):
        torch.manual_seed(0)
        model = GPT(CONFIG).to(torch.bfloat16)
        fsdp = None
        if stage == 0:  # one replica's state (no data-parallel traffic counted here)
            opt = MixedPrecisionOptimizer(torch.optim.AdamW(model.parameters(), lr=LR))
        elif stage == 1:
            opt = DistributedOptimizer(model, ctx, lr=LR)
        else:
            fsdp = FullyShardedDataParallel(model, ctx, stage=stage)
            opt = ShardedAdamW(fsdp, lr=LR)
        x = _rows(_batches()[0], ctx)
        with CommCounter() as step:
            model(x, x)[1].backward()
            opt.step()
        opt.zero_grad()
        model(x, x)[1].backward()
        params = list(model.parameters())
        out[stage] = {"traffic": {(r.kind, r.phase): 0 for r in step.records},
                      "memory": training_state_bytes(params, opt, fsdp)}
        for r in step.records:
            out[stage]["traffic"][r.kind, r.phase] += r.bytes
    return out


def test_bytes_per_step_and_per_rank_equal_the_formulas():
    dp = 2
    n = sum(p.numel() for p in GPT(CONFIG).parameters())
    psi = 2 * n                                                        # bf16 bytes
    for rank, out in enumerate(launch(_bytes, dp=dp, timeout_s=90)):
        # ZeRO-1 reduce-scatters fp32 gradients (4n) and all-gathers bf16 weights (psi)
        assert out[1]["traffic"] == {("reduce_scatter", "optimizer"): 4 * n,
                                     ("all_gather", "optimizer"): psi}
        assert out[2]["traffic"] == {("reduce_scatter", "backward"): psi,       # 2 psi
                                     ("all_gather", "optimizer"): psi}
        assert out[3]["traffic"] == {("all_gather", "forward"): psi,           # 3 psi
                                     ("all_gather", "backward"): psi,
                                     ("reduce_scatter", "backward"): psi}
        for stage in (0, 1, 2, 3):  # Rajbhandari et al. 2019, Figure 1, K = 12
            formula = zero_state_bytes(n, dp, stage, dtype_bytes=2)
            assert out[stage]["memory"] == pytest.approx(formula), (rank, stage, out[stage])


def test_misuse_is_refused():
    ctx = ParallelContext()
    with pytest.raises(ValueError, match="stage=1: FullyShardedDataParallel runs ZeRO stage 2 or"):
        FullyShardedDataParallel(GPT(CONFIG), ctx, stage=1)
    with pytest.raises(ValueError, match="use recompute='none' with zero=3"):
        FullyShardedDataParallel(GPT(CONFIG, recompute="full"), ctx, stage=3)
    with pytest.raises(ValueError, match="prefetch=-1 must be an integer >= 0"):
        FullyShardedDataParallel(GPT(CONFIG), ctx, prefetch=-1)
    with pytest.raises(TypeError, match="needs a minimt GPT"):
        FullyShardedDataParallel(copy.deepcopy(GPT(CONFIG).transformer), ctx)


def _optimizer(model, ctx, stage):
    if stage == 1:
        return DistributedOptimizer(model, ctx, lr=LR)
    return ShardedAdamW(FullyShardedDataParallel(model, ctx, stage=stage), lr=LR)


def _step(model, opt, x, ctx):
    x = _rows(x, ctx)
    model(x, x)[1].backward()
    opt.step()
    opt.zero_grad()


def _reshard(ctx, directory, saved_stage):
    """Train 2 steps at ZeRO-`saved_stage` and save; every stage loads it and takes step 3: all
    end where the uninterrupted run does."""
    x1, x2, x3 = _batches()
    torch.manual_seed(0)
    model = GPT(CONFIG)
    opt = _optimizer(model, ctx, saved_stage)
    _step(model, opt, x1, ctx)
    _step(model, opt, x2, ctx)
    save_checkpoint(directory, model, opt, ctx, step=2)
    _step(model, opt, x3, ctx)
    reference = full_state_dict(model, ctx)
    errors = {}
    for stage in (1, 2, 3):
        torch.manual_seed(1)  # other initial weights: the checkpoint must replace them
        other = GPT(CONFIG)
        other_opt = _optimizer(other, ctx, stage)
        load_checkpoint(directory, other, other_opt, ctx)
        _step(other, other_opt, x3, ctx)
        mine = full_state_dict(other, ctx)
        errors[stage] = max((mine[n] - reference[n]).abs().max().item() for n in reference)
    return errors


@pytest.mark.parametrize("saved_stage", [1, 3])
def test_checkpoints_reshard_across_zero_stages(tmp_path, saved_stage):
    for rank, errors in enumerate(launch(_reshard, str(tmp_path), saved_stage, dp=2,
                                         timeout_s=90)):
        for stage, error in errors.items():
            assert error < 1e-6, f"saved at ZeRO-{saved_stage}, loaded at ZeRO-{stage}: {error}"
