"""The 3D mesh on 8 real ranks (tp 2 x pp 2 x dp 2, one thread each): a tiny GPT trains with the
serial model's losses and ends with its parameters; the bytes each group carries per step equal
the closed forms; the rank map follows Megatron's order."""
import pytest
import torch

from minimt.config import GPTConfig
from minimt.model import GPT
from minimt.parallel import (CommCounter, DistributedOptimizer, MeshModel, all_reduce,
                             bytes_per_step, full_state_dict, launch, pipeline_step,
                             rank_holdings, stage_numel, sync_tied_grads, unique_parameters)

from helpers import decays, reference_adamw, token_batch

CONFIG = GPTConfig(vocab_size=40, block_size=8, n_layer=4, n_head=4, n_embd=16)
GLOBAL_BATCH, MICROBATCHES, STEPS, LR = 8, 2, 3, 1e-3


def batch(step):
    return token_batch(step, CONFIG, GLOBAL_BATCH)


def serial_run():
    torch.manual_seed(0)
    model = GPT(CONFIG)
    opt = reference_adamw(model.parameters(), LR)
    losses = []
    for step in range(STEPS):
        _, loss = model(*batch(step))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, losses


def mesh_share(ctx, **layout):
    """This rank's share of GPT(CONFIG) (seed 0), cut as the Trainer cuts it (1F1B)."""
    torch.manual_seed(0)
    return MeshModel(GPT(CONFIG), ctx, GLOBAL_BATCH, num_microbatches=MICROBATCHES, **layout)


def _mesh_run(ctx):
    share = mesh_share(ctx, zero=True)
    stages, schedule = share.chunks, share.schedule
    opt = DistributedOptimizer(stages, ctx, lr=LR, weight_decay=0.1, decay_filter=decays)
    losses, counters = [], []
    for step in range(STEPS):
        x, y = (t.chunk(ctx.dp_size)[ctx.dp_rank] for t in batch(step))
        with CommCounter() as counter:
            opt.zero_grad()
            record = pipeline_step(stages, schedule, ctx, x, y)
            sync_tied_grads(stages, ctx)
            opt.step()
        counters.append({g: counter.bytes(group=g, kind=k) for g, k in
                         (("tp", "all_reduce"), ("pp", "send"), ("dp", None))})
        if ctx.is_last_stage:  # the global batch's loss: the mean over data-parallel replicas
            loss = all_reduce(torch.tensor([record.loss]), ctx, "dp") / ctx.dp_size
            losses.append(loss.item())
    return losses, full_state_dict(stages, ctx), counters, sum(p.numel() for p in opt.params)


def test_3d_mesh_trains_like_the_serial_model():
    """tp 2 x pp 2 x dp 2 with ZeRO-1 and the 1F1B schedule: every step's loss equals the serial
    model's on the global batch (1e-5), and so does every parameter afterwards (1e-6)."""
    reference, serial_losses = serial_run()
    expected = dict(reference.named_parameters())
    results = launch(_mesh_run, tp=2, pp=2, dp=2, timeout_s=120)
    merged = {}
    for rank, (losses, params, counters, numel) in enumerate(results):
        d, p, t = rank // 4, rank // 2 % 2, rank % 2
        if p == 1:
            assert losses == pytest.approx(serial_losses, abs=1e-5)
        merged.update(params)
        assert numel == stage_numel(CONFIG, 2, 2, p)
        formula = bytes_per_step(CONFIG, 2, 2, 2, p, GLOBAL_BATCH, MICROBATCHES)
        assert counters[-1]["tp"] == formula["tp"]
        assert counters[-1]["dp"] == formula["dp"]
        assert counters[-1]["pp"] == formula["pp"]
    assert merged.keys() == expected.keys()
    for name, p in merged.items():
        assert torch.allclose(p, expected[name], atol=1e-6, rtol=0), name


def _mesh_run_ddp(ctx):
    """The same run with DistributedDataParallel + torch.optim.AdamW: the schedule's backwards
    run under no_sync(), then one bucketed all-reduce of the accumulated gradients."""
    share = mesh_share(ctx, bucket_size_mb=0.01)
    stages, schedule, ddp = share.chunks, share.schedule, share.ddp
    opt = reference_adamw(unique_parameters(stages), LR)
    losses = []
    for step in range(STEPS):
        x, y = (t.chunk(ctx.dp_size)[ctx.dp_rank] for t in batch(step))
        opt.zero_grad()
        with CommCounter() as counter:
            with ddp.no_sync():
                record = pipeline_step(stages, schedule, ctx, x, y)
            sync_tied_grads(stages, ctx)
            ddp.sync_gradients()
        opt.step()
        if ctx.is_last_stage:
            losses.append((all_reduce(torch.tensor([record.loss]), ctx, "dp") / ctx.dp_size).item())
    return losses, full_state_dict(stages, ctx), counter.count(group="dp"), len(ddp.buckets)


def test_3d_mesh_with_ddp_trains_like_the_serial_model():
    reference, serial_losses = serial_run()
    expected = dict(reference.named_parameters())
    merged = {}
    for rank, (losses, params, num_reduces, num_buckets) in enumerate(
            launch(_mesh_run_ddp, tp=2, pp=2, dp=2, timeout_s=120)):
        if losses:
            assert losses == pytest.approx(serial_losses, abs=1e-5)
        assert num_reduces == num_buckets > 1
        merged.update(params)
    for name, p in expected.items():
        assert torch.allclose(merged[name], p, atol=1e-6, rtol=0), name


def test_rank_holdings_follow_megatrons_order():
    ranks = rank_holdings(CONFIG, tp=2, pp=2, dp=2)
    assert [(r["dp"], r["pp"], r["tp"]) for r in ranks[:4]] == [(0, 0, 0), (0, 0, 1), (0, 1, 0),
                                                                 (0, 1, 1)]
    assert list(ranks[0]["layers"]) == [0, 1] and list(ranks[3]["layers"]) == [2, 3]
    assert list(ranks[1]["heads"]) == [2, 3] and list(ranks[1]["vocab"]) == list(range(20, 40))
    assert ranks[0]["embedding"] and not ranks[0]["head"] and ranks[7]["head"]


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_stage_numel_counts_the_real_parameters(tp, pp):
    """The closed form equals the parameters the ranks of each stage really hold (no processes:
    tensor-parallel slicing needs only the context's coordinates)."""
    from minimt.parallel import ParallelContext
    from minimt.parallel.tensor import apply_tensor_parallel
    from minimt.parallel.pipeline_runtime import GPTStage
    for pp_rank in range(pp):
        ctx = ParallelContext(tp=tp, pp=pp, rank=pp_rank * tp,  # coordinates only, no groups
                              groups={"tp": None, "pp": None, "dp": None})
        model = apply_tensor_parallel(GPT(CONFIG), ctx)
        stage = GPTStage(model, pp_rank, pp)
        numel = sum(p.numel() for p in {id(q): q for q in stage.parameters()}.values())
        assert stage_numel(CONFIG, tp, pp, pp_rank) == numel
