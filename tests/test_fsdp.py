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
from minimt.parallel.tensor import apply_tensor_parallel
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


def _model(ctx):
    """The GPT of seed 0, this rank's tensor-parallel share of it when tp > 1."""
    torch.manual_seed(0)
    return GPT(CONFIG) if ctx.tp_size == 1 else apply_tensor_parallel(GPT(CONFIG), ctx)


def _sharded_weights(ctx, stage, dtype, prefetch=1):
    model = _model(ctx).to(dtype)
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


def _with_fully_shard(ctx, dtype):
    """STEPS AdamW steps under torch's fully_shard (FSDP2, its MixedPrecisionPolicy for bf16:
    bf16 gathers, compute and reduce-scatters, fp32 sharded parameters) and under minimt's
    ZeRO-3 from the same (bf16-representable) weights: their largest difference, and how far
    the weights moved. With tp > 1 both shard minimt's tensor-parallel GPT over the dp
    sub-mesh (2D: FSDP over dp x Megatron TP; minimt's rank order is the (dp, tp) mesh's)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    model = _model(ctx)
    with torch.no_grad():  # minimt's bf16 run starts from the bf16-rounded weights
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    mesh = init_device_mesh("cpu", (ctx.dp_size, ctx.tp_size), mesh_dim_names=("dp", "tp"))["dp"]
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    for x in _batches():
        x = _rows(x, ctx)
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    theirs = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
    ours = _sharded_weights(ctx, 3, dtype)                            # the fp32 master pieces
    moved = max((ours[n] - initial[n]).abs().max().item() for n in theirs)
    return max((ours[n] - theirs[n]).abs().max().item() for n in theirs), moved


@pytest.mark.parametrize("dtype,tp", [(torch.float32, 1), (torch.bfloat16, 1), (torch.float32, 2)],
                         ids=["fp32", "bf16", "fp32-tp2"])
def test_zero3_equals_torch_fully_shard(dtype, tp):
    # measured: equal to the bit in fp32, in bf16 and at tp 2 x dp 2 (the same gathers, sums and
    # AdamW arithmetic)
    for rank, (error, moved) in enumerate(launch(_with_fully_shard, dtype, tp=tp, dp=2,
                                                 timeout_s=90)):
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


# ------------------------------------------------------------ the Trainer on tp x pp x dp meshes
MESH_CONFIG = GPTConfig(vocab_size=40, block_size=16, n_layer=4, n_head=4, n_embd=32)
# as tests/test_trainer_layouts.py: Adam turns a relative rounding difference d of a gradient into
# about lr * d a step; measured gaps 2e-6..2.2e-5 at lr 1e-2, 3 steps (tp sums in another order)
MESH_LR, MESH_STEPS = 1e-2, 3
MESH_TOL = MESH_STEPS * MESH_LR * 1e-3


def _mesh_trainer(layout, ctx=None):
    from minimt.data import TokenDataset
    from minimt.train import Trainer, TrainConfig
    torch.manual_seed(0)
    data = TokenDataset(torch.randint(0, 40, (4000,), generator=torch.Generator().manual_seed(3)))
    config = TrainConfig(max_iters=MESH_STEPS, batch_size=8, learning_rate=MESH_LR,
                         min_lr=MESH_LR / 10, warmup_iters=1, progress=False, grad_clip=0.5,
                         seed=7, **layout)
    trainer = Trainer(GPT(MESH_CONFIG), data, config, ctx=ctx)
    for _ in range(MESH_STEPS):
        trainer.train_step()
    return trainer


def _held_weights(ctx, layouts):
    """Per layout: {serial name: full tensor} of every parameter this rank holds after training
    (the last stage's copy of the tied weight under the embedding's name)."""
    from minimt.parallel.checkpoint import local_parameters, unshard
    out = []
    for layout in layouts:
        trainer = _mesh_trainer(layout, ctx)
        sharded = trainer.mesh.sharded           # None at ZeRO-0/1: every parameter is whole
        local = sharded.param_tensors() if sharded else {id(p): p.detach() for p in
                                                         trainer.mesh.parameters()}
        out.append({name: unshard(name, local[id(p)], p, ctx, MESH_CONFIG)
                    for name, p, _ in local_parameters(trainer.mesh.chunks)})
    return out


def _assert_equal_serial(mesh, layouts):
    serial = [dict(_mesh_trainer({k: v for k, v in layout.items() if k != "zero"})
                   .model.named_parameters()) for layout in layouts]
    for rank, held in enumerate(launch(_held_weights, layouts, **mesh, timeout_s=90)):
        for layout, weights, reference in zip(layouts, held, serial):
            assert weights, (rank, layout)
            gap = max((weights[n] - reference[n]).abs().max().item() for n in weights)
            assert gap < MESH_TOL, f"{mesh} {layout}, rank {rank}: max weight gap {gap:.2e}"


def test_zero2_and_zero3_with_tensor_parallelism_and_accumulation_equal_serial():
    """2D FSDP + TP (tp 2 x dp 2): each tp rank shards its slices over its dp group. Gradient
    accumulation (2 micro-batches of 8, one global batch of 16) reduce-scatters each backward
    into the shard and equals the serial run on the same batches."""
    _assert_equal_serial(dict(tp=2, dp=2), [dict(zero=2), dict(zero=3),
                                            dict(zero=2, gradient_accumulation_steps=2),
                                            dict(zero=3, gradient_accumulation_steps=2)])


def test_zero2_with_pipeline_parallelism_equals_serial():
    """pp 2 x dp 2: 1F1B (with accumulation) and ZB-V (its weight gradients come in the split W
    pass; the first rank holds both copies of the tied weight); the tied weight's gradient piece
    is summed between the first and last stage."""
    _assert_equal_serial(dict(pp=2, dp=2), [dict(zero=2, gradient_accumulation_steps=2),
                                            dict(zero=2, schedule="zbv", num_chunks=2)])


def test_zero2_on_the_3d_mesh_equals_serial():
    _assert_equal_serial(dict(tp=2, pp=2, dp=2), [dict(zero=2, schedule="interleaved",
                                                       num_chunks=2, num_microbatches=2)])


def test_zero3_with_pipeline_parallelism_is_refused_with_why():
    from minimt.parallel.layout import check_layout
    with pytest.raises(ValueError, match=r"ZeRO-3 with pipeline parallelism \(pp=2\) is refused: "
                                         r"a pipeline stage runs the forwards"):
        check_layout(MESH_CONFIG, 1, 2, 2, 8, zero=3)
    assert check_layout(MESH_CONFIG, 2, 2, 2, 16, zero=2) == 4


def test_zero_1_2_3_with_context_parallelism_and_clipping_equal_serial():
    """cp 2 x dp 2: each cp rank's backward saw half of every sequence, so ZeRO-2/3's gradient
    shard is averaged over the cp group after the reduce-scatter (without it: 4.2e-3 off after 3
    steps), and the clipping norm of a sharded gradient counts the cp ranks' equal pieces once
    (summed over them it was sqrt(2) too large: 1.6e-3 off, ZeRO-1 included)."""
    _assert_equal_serial(dict(cp=2, dp=2), [dict(zero=1), dict(zero=2), dict(zero=3)])


def _train_and_save(ctx, layout, directory, steps, load):
    """Train the mesh Trainer until `steps` (from the checkpoint in `directory` when `load`) and
    save its step there: weights, AdamW state, the batch sampler's state."""
    from minimt.parallel.checkpoint import load_checkpoint as load_mesh
    from minimt.train_run import resume, run_state
    from minimt.data import TokenDataset
    from minimt.train import Trainer, TrainConfig
    torch.manual_seed(1 if load else 0)  # a loaded checkpoint must replace other weights
    data = TokenDataset(torch.randint(0, 40, (4000,), generator=torch.Generator().manual_seed(3)))
    config = TrainConfig(max_iters=MESH_STEPS, batch_size=8, learning_rate=MESH_LR,
                         min_lr=MESH_LR / 10, warmup_iters=1, progress=False, grad_clip=0.5,
                         seed=7, **layout)
    trainer = Trainer(GPT(MESH_CONFIG), data, config, ctx=ctx)
    if load:
        meta = load_mesh(directory, trainer.mesh.chunks, trainer.optimizer, ctx)
        resume(trainer, meta["extra"], meta["step"])
    while trainer.iter_num < steps:
        trainer.train_step()
    save_checkpoint(directory, trainer.mesh.chunks, trainer.optimizer, ctx, step=steps,
                    extra=run_state(trainer, {}))


def test_a_checkpoint_reshards_across_zero_stages_and_layouts(tmp_path):
    """ZeRO-3 at tp 2 x dp 2 trains step 1 and saves; ZeRO-2 at pp 2 x dp 2 loads it, takes step 2
    and saves; ZeRO-3 at tp 2 x dp 2 loads that, takes step 3 and saves; the serial model read
    from the last checkpoint is the uninterrupted serial run's."""
    from minimt.parallel.checkpoint import load_serial_model
    launch(_train_and_save, dict(zero=3), str(tmp_path), 1, False, tp=2, dp=2, timeout_s=90)
    launch(_train_and_save, dict(zero=2), str(tmp_path), 2, True, pp=2, dp=2, timeout_s=90)
    launch(_train_and_save, dict(zero=3), str(tmp_path), 3, True, tp=2, dp=2, timeout_s=90)
    serial = _mesh_trainer({}).model
    resumed = load_serial_model(tmp_path)
    gaps = {n: (p - q).abs().max().item()
            for (n, p), q in zip(serial.named_parameters(), resumed.parameters())}
    assert max(gaps.values()) < MESH_TOL, gaps


def _in_flight_during_backward(ctx, stage):
    """How many reduce-scatters had been launched, and how many were still travelling, when the
    backward reached the token embedding's output (the blocks' gradients done, the tied weight's
    not); then how many a step launched and how many the backward's end left travelling."""
    torch.manual_seed(0)
    model = GPT(CONFIG)
    fsdp = FullyShardedDataParallel(model, ctx, stage=stage)
    seen = {}

    def record(grad):
        seen.update(launched=len(counter.select(kind="reduce_scatter")),
                    travelling=len(fsdp.in_flight))

    def watch(module, args, out):                                      # out (B, T, C)
        out.register_hook(record)
    model.transformer.wte.register_forward_hook(watch)
    x = _rows(_batches()[0], ctx)
    with CommCounter() as counter:
        model(x, x)[1].backward()
    return seen, len(counter.select(kind="reduce_scatter")), len(fsdp.in_flight)


@pytest.mark.parametrize("stage", [2, 3])
def test_gradients_are_reduce_scattered_while_the_backward_runs(stage):
    """Each block's reduce-scatter starts as soon as its gradients are complete and travels while
    the backward goes on; the backward's end has added every one into the shard."""
    for seen, launched, left in launch(_in_flight_during_backward, stage, dp=2, timeout_s=60):
        # every block's launched (and perhaps the positions' unit), the tied weight's not yet
        assert CONFIG.n_layer <= seen["launched"] < CONFIG.n_layer + 2, seen
        assert seen["travelling"] == 1, seen                           # not waited for at once
        assert launched == CONFIG.n_layer + 2 and left == 0  # + the tied weight and the rest
