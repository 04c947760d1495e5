"""DistributedDataParallel and DistributedOptimizer (ZeRO-1) on real gloo ranks: equal to the serial
model trained on the global batch, to torch's own DDP and AdamW; ZeRO's state bytes per rank
equal the formula; both compose with tensor parallelism and 16-bit weights."""
import pytest
import torch
import torch.nn as nn

from minimt.config import GPTConfig
from minimt.model import GPT
from minimt.parallel import (CommCounter, DistributedDataParallel, DistributedOptimizer,
                             apply_tensor_parallel, launch)

from helpers import decays, reference_adamw, token_batch

# No biases: the key projection's bias has a zero gradient in exact arithmetic (softmax ignores a
# constant added to every score), so Adam would turn float noise into +-lr steps and no two
# summation orders (serial vs averaged over ranks) could agree on it to 1e-6.
CONFIG = GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=4, n_embd=16, bias=False)
# Adam moves every weight by about lr per step whatever the gradient's size, so float rounding in
# the sum over ranks shows up in the weights in proportion to lr: ~1e-7 here at lr 1e-3.
GLOBAL_BATCH, STEPS, LR = 8, 3, 1e-3


def batch(step, size=GLOBAL_BATCH):
    """The global batch of `step`: the same numbers in every process."""
    return token_batch(step, CONFIG, size)


def local(tensor, ctx):
    """This data-parallel rank's slice of a global batch."""
    return tensor.chunk(ctx.dp_size)[ctx.dp_rank]


def serial_adamw(steps=STEPS, dtype=torch.float32):
    """The reference: one GPT on the global batch, torch.optim.AdamW (decay on >= 2-D weights)."""
    torch.manual_seed(0)
    model = GPT(CONFIG)
    opt = reference_adamw(model.parameters(), LR)
    losses = []
    for step in range(steps):
        x, y = batch(step)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, losses


def _ddp_run(ctx, bucket_size_mb, accumulate):
    torch.manual_seed(0)
    model = GPT(CONFIG)
    ddp = DistributedDataParallel(model, ctx, bucket_size_mb=bucket_size_mb)
    opt = reference_adamw(model.parameters(), LR)
    counter = CommCounter()
    with counter:
        for step in range(STEPS):
            x, y = (local(t, ctx) for t in batch(step))
            if accumulate:  # two micro-batches, the first without communication
                (x1, x2), (y1, y2) = x.chunk(2), y.chunk(2)
                with ddp.no_sync():
                    (ddp(x1, y1)[1] / 2).backward()
                (ddp(x2, y2)[1] / 2).backward()
            else:
                ddp(x, y)[1].backward()
            opt.step()
            opt.zero_grad()
    return dict(model.named_parameters()), len(ddp.buckets), counter.count(group="dp")


@pytest.mark.parametrize("dp,bucket_mb,accumulate", [(2, 0.002, False), (4, 25.0, False),
                                                     (2, 0.002, True)])
def test_ddp_equals_serial_model_on_the_global_batch(dp, bucket_mb, accumulate):
    """Several AdamW steps on dp replicas of B/dp sequences = the serial model on B, to 1e-5.
    With two micro-batches per rank the first under no_sync(), only the last backward talks."""
    reference, _ = serial_adamw()
    expected = dict(reference.named_parameters())
    for params, num_buckets, num_ops in launch(_ddp_run, bucket_mb,
                                               accumulate, dp=dp, timeout_s=60):
        assert num_buckets > 1 if bucket_mb < 1 else num_buckets == 1
        assert num_ops == STEPS * num_buckets  # one all-reduce per bucket per step
        for name, p in params.items():
            assert torch.allclose(p, expected[name], atol=1e-5, rtol=0), name


def _against_torch_ddp(ctx):
    torch.manual_seed(0)
    mine = DistributedDataParallel(GPT(CONFIG), ctx, bucket_size_mb=0.003)
    torch.manual_seed(0)
    theirs = nn.parallel.DistributedDataParallel(GPT(CONFIG), process_group=ctx.dp_group,
                                                 bucket_cap_mb=0.003)
    x, y = (local(t, ctx) for t in batch(0))
    mine(x, y)[1].backward()
    theirs(x, y)[1].backward()
    return ({n: p.grad for n, p in mine.module.named_parameters()},
            {n: p.grad for n, p in theirs.module.named_parameters()})


def test_ddp_gradients_equal_torch_ddp():
    """After one backward, our averaged gradients equal torch.nn.parallel.DistributedDataParallel's
    on the same gloo group, parameter by parameter."""
    for mine, theirs in launch(_against_torch_ddp, dp=2, timeout_s=60):
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.allclose(mine[name], theirs[name], atol=1e-7, rtol=1e-6), name


def _timeline(ctx):
    torch.manual_seed(0)
    ddp = DistributedDataParallel(GPT(CONFIG), ctx, bucket_size_mb=0.002)
    x, y = (local(t, ctx) for t in batch(0))
    ddp(x, y)[1].backward()
    return ddp.timeline, len(ddp.buckets)


def test_ddp_launches_buckets_during_the_backward():
    """The first bucket is sent before the last gradient is ready: communication overlaps."""
    for timeline, num_buckets in launch(_timeline, dp=2, timeout_s=60):
        launches = [start for _, start, _ in timeline["buckets"]]
        assert len(launches) == num_buckets and launches == sorted(launches)
        assert launches[0] < max(timeline["ready"])
        assert all(done >= start for _, start, done in timeline["buckets"])


def _zero_run(ctx, dtype):
    torch.manual_seed(0)
    model = GPT(CONFIG).to(dtype)
    opt = DistributedOptimizer(model, ctx, lr=LR, weight_decay=0.1, decay_filter=decays)
    before = opt.state_bytes()
    with CommCounter() as counter:
        for step in range(STEPS):
            x, y = (local(t, ctx) for t in batch(step))
            model(x, y)[1].backward()
            opt.step()
            opt.zero_grad()
    return (dict(model.named_parameters()), before, opt.state_bytes(), opt.shard_size,
            counter.records)


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_zero_equals_torch_adamw_and_state_bytes_match_the_formula(dp):
    """ZeRO-1 on dp ranks = torch.optim.AdamW on the serial model and global batch, to 1e-6; each
    rank holds 8 * ceil(N/dp) bytes of state (m and v; fp32 weights are their own master)."""
    reference, _ = serial_adamw()
    expected = dict(reference.named_parameters())
    n = sum(p.numel() for p in reference.parameters())
    for params, before, after, shard, records in launch(_zero_run, torch.float32, dp=dp,
                                                        timeout_s=60):
        for name, p in params.items():
            assert torch.allclose(p, expected[name], atol=1e-6, rtol=0), name
        assert shard == -(-n // dp)
        assert after == {"master weights": 0, "exp_avg": 4 * shard, "exp_avg_sq": 4 * shard}
        assert before == after  # allocated once, up front
        kinds = [(r.kind, r.numel) for r in records]
        assert kinds == ([] if dp == 1 else [("reduce_scatter", shard * dp),
                                             ("all_gather", shard * dp)] * STEPS)


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_zero_with_16_bit_weights_keeps_fp32_master_shards(dp):
    """bf16 weights, fp32 master and moments for 1/dp of them: 12 * ceil(N/dp) bytes per rank;
    the weights stay bf16 and close to the fp32 run's (bf16 keeps ~3 significant digits)."""
    reference, _ = serial_adamw()
    n = sum(p.numel() for p in reference.parameters())
    expected = dict(reference.named_parameters())
    for params, _, after, shard, _ in launch(_zero_run, torch.bfloat16, dp=dp, timeout_s=60):
        assert after == {"master weights": 4 * shard, "exp_avg": 4 * shard,
                         "exp_avg_sq": 4 * shard}
        for name, p in params.items():
            assert p.dtype == torch.bfloat16
            assert torch.allclose(p.float(), expected[name], atol=0.05, rtol=0), name


def _zero_tensor_parallel(ctx):
    torch.manual_seed(0)
    model = apply_tensor_parallel(GPT(CONFIG), ctx)
    opt = DistributedOptimizer(model, ctx, lr=LR, weight_decay=0.1, decay_filter=decays)
    losses = []
    for step in range(STEPS):
        x, y = (local(t, ctx) for t in batch(step))
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    reference, _ = serial_adamw()  # trained serially here, then sliced like the rank's model
    expected = dict(apply_tensor_parallel(reference, ctx).named_parameters())
    return {n: (p, expected[n]) for n, p in model.named_parameters()}, losses


def test_zero_composes_with_tensor_parallelism():
    """tp 2 x dp 2: every rank's shards of the sharded weights equal the serial model's trained
    weights, sliced the same way, to 1e-6."""
    for pairs, _ in launch(_zero_tensor_parallel, tp=2, dp=2, timeout_s=60):
        for name, (got, expected) in pairs.items():
            assert torch.allclose(got, expected, atol=1e-6, rtol=0), name


def test_zero_refuses_mixed_dtypes():
    from minimt.parallel import ParallelContext
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).to(torch.bfloat16))
    with pytest.raises(ValueError, match="one dtype"):
        DistributedOptimizer(model, ParallelContext())


def serial_clipped(max_norm, steps=STEPS):
    """The serial reference with torch's clip_grad_norm_ before each AdamW step."""
    torch.manual_seed(0)
    model = GPT(CONFIG)
    opt = reference_adamw(model.parameters(), LR)
    norms = []
    for step in range(steps):
        model(*batch(step))[1].backward()
        norms.append(nn.utils.clip_grad_norm_(model.parameters(), max_norm).item())
        opt.step()
        opt.zero_grad()
    return model, norms


def _zero_clipped_and_scaled(ctx, max_norm):
    from minimt.precision import StaticLossScaler
    torch.manual_seed(0)
    model = apply_tensor_parallel(GPT(CONFIG), ctx)
    opt = DistributedOptimizer(model, ctx, lr=LR, weight_decay=0.1, decay_filter=decays,
                               grad_clip=max_norm, loss_scaler=StaticLossScaler(1024.0))
    norms, stepped = [], []
    for step in range(STEPS):
        x, y = (local(t, ctx) for t in batch(step))
        (model(x, y)[1] * 1024.0).backward()
        stepped.append(opt.step())
        opt.zero_grad()
        norms.append(opt.last_grad_norm)
    reference, _ = serial_clipped(max_norm)
    expected = dict(apply_tensor_parallel(reference, ctx).named_parameters())
    model(*batch(0))[1].mul(float("inf")).backward()  # an overflow: the step is skipped
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    skipped = not opt.step()
    unchanged = all(torch.equal(before[n], p) for n, p in model.named_parameters())
    pairs = {n: (p, expected[n]) for n, p in before.items()}
    return pairs, norms, stepped, skipped and unchanged


@pytest.mark.parametrize("tp,dp", [(1, 2), (2, 2)])
def test_zero_clips_the_mesh_wide_norm_and_unscales(tp, dp):
    """With a loss scale of 1024 and clipping at 0.05, ZeRO's global norm and weights equal the
    serial torch clip_grad_norm_ + AdamW run; an inf gradient skips the step on every rank."""
    _, serial_norms = serial_clipped(0.05)
    for pairs, norms, stepped, skipped in launch(_zero_clipped_and_scaled, 0.05, tp=tp, dp=dp,
                                                 timeout_s=60):
        assert stepped == [True] * STEPS and skipped
        assert norms == pytest.approx(serial_norms, rel=1e-5)
        assert min(serial_norms) > 0.05  # clipping really happened
        for name, (got, expected) in pairs.items():
            assert torch.allclose(got, expected, atol=1e-6, rtol=0), name


def _zero_and_mesh_norms(ctx):
    """ZeRO-1's clipping norm and MeshGradients' norm of the same gradients (equal batches on
    every replica, so the dp average is each replica's gradient), with one parameter marked as a
    copy held elsewhere (pipeline_duplicate), which neither may count."""
    from minimt.parallel.grads import MeshGradients
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    model[2].bias.pipeline_duplicate = True
    opt = DistributedOptimizer(model, ctx, lr=LR, grad_clip=1e-3)
    model(torch.randn(4, 6, generator=torch.Generator().manual_seed(1))).square().sum().backward()
    mesh_norm = MeshGradients(ctx).get_grad_norm(model.parameters())
    all_norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    opt.step()
    return opt.last_grad_norm, mesh_norm, all_norm


def test_zero_counts_the_norm_by_the_meshs_one_rule():
    for zero_norm, mesh_norm, all_norm in launch(_zero_and_mesh_norms, dp=2, timeout_s=30):
        assert zero_norm == pytest.approx(mesh_norm, rel=1e-6)
        assert mesh_norm < all_norm - 1e-3  # the marked copy really was left out


def test_clear_errors_for_bad_settings():
    from minimt.parallel import ParallelContext
    ctx = ParallelContext()
    with pytest.raises(ValueError, match="bucket_size_mb"):
        DistributedDataParallel(nn.Linear(2, 2), ctx, bucket_size_mb=0)
    with pytest.raises(ValueError, match="betas"):
        DistributedOptimizer(nn.Linear(2, 2), ctx, betas=(0.9, 1.0))
    ddp = DistributedDataParallel(nn.Linear(2, 2), ctx)
    with pytest.raises(RuntimeError, match="no_sync"):
        with ddp.no_sync():
            ddp.sync_gradients()
