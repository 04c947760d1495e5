"""Tests for minimt.formats, minimt.precision, minimt.clip_grads and minimt.precision_train:
format limits checked by casting, the dynamic scaler against torch.amp.GradScaler, master weights
against a plain fp32 AdamW, TP-aware norms and overflow on real gloo ranks, memory counts, and
short training runs (precision agreement, fault injection)."""
import math

import pytest
import torch

from minimt import GPTConfig
from minimt.clip_grads import clip_grad_norm, get_grad_norm
from minimt.data import TokenDataset
from minimt.formats import (FORMATS, cast, format_info, relative_rounding_error,
                            subnormal_fraction, underflow_fraction)
from minimt.parallel.launch import launch
from minimt.precision import (DynamicLossScaler, MixedPrecisionOptimizer, StaticLossScaler,
                              bytes_per_param, training_state_bytes)
from minimt.parallel.grads import MeshGradients
from minimt.precision_train import gradient_underflow, train_precision
from minimt.train import TrainConfig

# ---------------------------------------------------------------- formats


def test_fp16_and_bf16_limits_match_the_papers():
    fp16, bf16 = format_info("fp16"), format_info("bf16")
    assert (fp16.exponent_bits, fp16.mantissa_bits, fp16.max) == (5, 10, 65504.0)
    assert fp16.smallest_subnormal == 2.0 ** -24 and fp16.smallest_normal == 2.0 ** -14
    assert (bf16.exponent_bits, bf16.mantissa_bits) == (8, 7)
    assert bf16.smallest_normal == format_info("fp32").smallest_normal == 2.0 ** -126
    assert format_info("fp32").eps == 2.0 ** -23


@pytest.mark.parametrize("name", list(FORMATS))
def test_limits_hold_when_casting(name):
    """The table's numbers are what a cast really does: max survives, 2x max overflows, the
    smallest subnormal survives, half of it rounds (to even) to zero."""
    info = format_info(name)
    assert cast(info.max, name).item() == info.max
    assert cast(info.smallest_subnormal, name).item() == info.smallest_subnormal
    assert cast(info.smallest_subnormal / 2, name).item() == 0.0
    if name != "fp32":
        assert cast(1 + info.eps, name).item() == 1 + info.eps
        assert cast(1 + info.eps / 4, name).item() == 1.0  # below half a step: rounds to 1
        over = cast(info.max * 2, name).item()
        assert not math.isfinite(over) or name == "fp8_e4m3"  # e4m3fn has no inf: NaN instead


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_rounding_error_is_at_most_half_an_ulp(name):
    info = format_info(name)
    x = torch.empty(10_000).uniform_(-8, 8, generator=torch.Generator().manual_seed(0))
    x = x[x.abs() > 1e-3]
    assert relative_rounding_error(x, name).max().item() <= info.eps / 2


def test_underflow_and_subnormal_fractions():
    values = torch.tensor([1.0, 2.0 ** -20, 2.0 ** -26, 2.0 ** -30, 0.0])
    assert underflow_fraction(values, "fp16") == 0.5  # 2^-26 and 2^-30 of 4 nonzero values
    assert underflow_fraction(values, "bf16") == 0.0
    assert subnormal_fraction(values, "fp16") == 0.25  # 2^-20 is below 2^-14


# ---------------------------------------------------------------- loss scalers

def gradscaler_decisions(pattern, **kwargs):
    """Drive torch.amp.GradScaler (CPU) with a scripted finite/overflow pattern; return the scale
    after each update and whether each step was skipped (the parameter did not move)."""
    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", **kwargs)
    steps = []
    opt.register_step_post_hook(lambda *_: steps.append(1))  # GradScaler calls step() or skips it
    scales, skipped = [], []
    for overflow in pattern:
        opt.zero_grad()
        before = len(steps)
        scaler.scale((p * (math.inf if overflow else 1.0)).sum()).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        skipped.append(len(steps) == before)
    return scales, skipped


def our_decisions(pattern, **kwargs):
    scaler = DynamicLossScaler(**kwargs)
    scales, skipped = [], []
    for overflow in pattern:
        skipped.append(overflow)  # our rule: a step with inf/NaN gradients is skipped
        scaler.update(overflow)
        scales.append(scaler.scale)
    return scales, skipped


@pytest.mark.parametrize("kwargs", [
    dict(init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=3),
    dict(init_scale=1024.0, growth_factor=4.0, backoff_factor=0.25, growth_interval=2),
    dict(init_scale=2.0 ** 126, growth_factor=2.0, backoff_factor=0.5, growth_interval=1),
])
def test_dynamic_scaler_matches_torch_gradscaler(kwargs):
    g = torch.Generator().manual_seed(0)
    pattern = (torch.rand(60, generator=g) < 0.3).tolist()
    pattern[10:20] = [False] * 10  # a clean run long enough to grow
    pattern[30:34] = [True] * 4    # repeated overflows
    theirs, ours = gradscaler_decisions(pattern, **kwargs), our_decisions(pattern, **kwargs)
    assert ours[1] == theirs[1], "skipped steps differ"
    assert ours[0] == theirs[0], "scale after each step differs"
    assert len(set(ours[0])) > 2  # the pattern really grew and backed off


@pytest.mark.parametrize("kwargs", [
    dict(init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2),
    dict(init_scale=1000.0, growth_factor=1.7, backoff_factor=0.3, growth_interval=3),
])
def test_long_run_with_many_overflows_makes_gradscaler_decisions(kwargs):
    """10,000 steps, 60% overflowing: the scale backs off to fp32's subnormals and then to 0.0,
    where GradScaler skips every step; a float64 scale would shrink on to 1e-300 instead."""
    g = torch.Generator().manual_seed(0)
    pattern = (torch.rand(10_000, generator=g) < 0.6).tolist()
    with pytest.warns(RuntimeWarning, match="underflowed to 0"):
        ours = our_decisions(pattern, **kwargs)
    theirs = gradscaler_decisions(pattern, **kwargs)
    first_diff = next((i for i, (a, b) in enumerate(zip(ours[0], theirs[0])) if a != b), None)
    assert first_diff is None, f"scale differs from step {first_diff}: {ours[0][first_diff]} vs " \
                               f"{theirs[0][first_diff]}"
    assert ours[1] == theirs[1], "skipped steps differ"
    assert 0 < min(s for s in ours[0] if s > 0) < 2.0 ** -126  # went through the subnormals
    assert ours[0][-1] == 0.0                                   # then exactly 0, as GradScaler


def test_optimizer_skips_every_step_once_the_scale_is_zero():
    """1/0 is inf in fp32, as GradScaler's inv_scale: the gradients become NaN and the step is
    skipped (no ZeroDivisionError), so the weights stay finite."""
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.float16))
    opt = MixedPrecisionOptimizer(torch.optim.SGD([p], lr=0.1),
                                  DynamicLossScaler(init_scale=2.0 ** -149, growth_interval=1))
    opt.scale_loss((p.float() * math.inf).sum()).backward()
    with pytest.warns(RuntimeWarning, match="underflowed to 0"):
        assert not opt.step()
    assert opt.scale == 0.0
    opt.zero_grad()
    opt.scale_loss(p.float().sum()).backward()
    assert not opt.step() and torch.equal(p, torch.ones(2, dtype=torch.float16))


def test_dynamic_scaler_defaults_and_bad_arguments():
    s = DynamicLossScaler()
    assert (s.scale, s.growth_factor, s.backoff_factor, s.growth_interval) == (2.0 ** 16, 2.0, 0.5, 2000)
    assert isinstance(s.scale, float)
    for bad in (dict(init_scale=0), dict(growth_factor=1.0), dict(backoff_factor=1.5),
                dict(growth_interval=0)):
        with pytest.raises(ValueError):
            DynamicLossScaler(**bad)


def test_static_scaler_keeps_its_scale():
    s = StaticLossScaler(128.0)
    s.update(True)
    s.update(False)
    assert s.scale == 128.0


# ---------------------------------------------------------------- master weights

def test_master_weights_step_equals_fp32_adamw_on_unscaled_grads():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4).half()
    reference = [p.detach().float().clone().requires_grad_() for p in model.parameters()]
    scaler = StaticLossScaler(1024.0)
    opt = MixedPrecisionOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), scaler)
    ref_opt = torch.optim.AdamW(reference, lr=1e-2)
    for step in range(3):
        x = torch.randn(16, 8).half()
        opt.zero_grad()
        opt.scale_loss(model(x).float().pow(2).mean()).backward()
        for r, p in zip(reference, model.parameters()):
            r.grad = p.grad.float() / 1024.0  # the same 16-bit grads, unscaled in fp32
        assert opt.step()
        ref_opt.step()
        for r, m, p in zip(reference, opt.master_params, model.parameters()):
            assert m.dtype == torch.float32 and p.dtype == torch.float16
            torch.testing.assert_close(m, r, atol=0, rtol=0)
            assert torch.equal(p, m.half())  # the model holds the rounded master
    assert all(t.dtype == torch.float32 for s in opt.optimizer.state.values()
               for k, t in s.items() if k != "step")


def test_master_weights_keep_updates_that_fp16_rounds_away():
    """1 + 1e-4 is 1 in fp16 (eps 2^-10): ten tiny SGD steps vanish on fp16 weights but add up on
    the fp32 master."""
    w16 = torch.nn.Parameter(torch.ones(1, dtype=torch.float16))
    plain = torch.nn.Parameter(torch.ones(1, dtype=torch.float16))
    opt = MixedPrecisionOptimizer(torch.optim.SGD([w16], lr=1.0))
    for _ in range(10):
        w16.grad = torch.full((1,), -1e-4, dtype=torch.float16)
        opt.step()
        with torch.no_grad():
            plain += 1e-4
    assert plain.item() == 1.0
    assert opt.master_params[0].item() == pytest.approx(1.001, abs=1e-6)
    assert w16.item() == pytest.approx(1.0, abs=1e-3) and w16.item() > 1.0


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_overflow_skips_the_step_and_backs_off(bad):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).half()
    opt = MixedPrecisionOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2),
                                  DynamicLossScaler(init_scale=256.0))
    before = [p.detach().clone() for p in model.parameters()]
    opt.scale_loss(model(torch.randn(3, 4).half()).float().sum()).backward()
    model.weight.grad[0, 0] = bad
    assert opt.step() is False
    assert opt.scale == 128.0 and opt.skipped_steps == 1 and not opt.optimizer.state
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_wrapper_rejects_integer_params_and_used_optimizers():
    with pytest.raises(ValueError, match="float16, bfloat16 and float32"):
        MixedPrecisionOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.ones(2, dtype=torch.float64))], lr=1))
    p = torch.nn.Parameter(torch.ones(2))
    sgd = torch.optim.SGD([p], lr=1, momentum=0.9)
    p.grad = torch.ones(2)
    sgd.step()
    with pytest.raises(ValueError, match="before its first step"):
        MixedPrecisionOptimizer(sgd)


# ---------------------------------------------------------------- memory

def test_bytes_per_param_of_the_schemes():
    assert bytes_per_param("fp32 + Adam") == 16
    assert bytes_per_param("mixed, fp32 grads (minimt)") == 18
    assert bytes_per_param("mixed, 16-bit grads kept (Megatron)") == 20
    assert bytes_per_param("mixed, ZeRO's count") == 16


@pytest.mark.parametrize("half, expected", [(False, 16), (True, 18)])
def test_real_training_state_matches_the_calculator(half, expected):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    model = model.half() if half else model
    opt = MixedPrecisionOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3))
    opt.scale_loss(model(torch.randn(4, 64, dtype=next(model.parameters()).dtype)).float().sum()).backward()
    assert opt.step()
    n = sum(p.numel() for p in model.parameters())
    counted = training_state_bytes(model, opt)
    step_counters = 4 * len(opt.master_params)  # AdamW keeps one fp32 0-d `step` per parameter
    assert sum(counted.values()) == expected * n + step_counters


# ---------------------------------------------------------------- clipping and TP

def test_serial_clip_matches_torch():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for p, q in zip(ours, theirs):
        p.grad = torch.randn_like(p) * 3
        q.grad = p.grad.clone()
    assert get_grad_norm(ours, norm_type=math.inf) == max(p.grad.abs().max().item() for p in ours)
    ref_norm = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert clip_grad_norm(ours, 1.0) == pytest.approx(ref_norm.item(), rel=1e-6)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(ours, 0.0)


def _sharded_grads(ctx, inf_on_rank):
    """A (8, 6) weight split by rows over the TP ranks (tensor_model_parallel) plus a replicated
    (6,) bias; every rank computes the global norm, clips, and checks for overflow."""
    torch.manual_seed(0)
    full_w, bias_grad = torch.randn(8, 6), torch.randn(6)  # same on every rank (same seed)
    rows = 8 // ctx.tp_size
    w = torch.nn.Parameter(torch.zeros(rows, 6))
    w.tensor_model_parallel = True
    w.grad = full_w[ctx.tp_rank * rows:(ctx.tp_rank + 1) * rows].clone()
    b = torch.nn.Parameter(torch.zeros(6))
    b.grad = bias_grad.clone()
    mesh = MeshGradients(ctx)
    norm = mesh.get_grad_norm([w, b])
    max_norm = mesh.get_grad_norm([w, b], norm_type=math.inf)
    clipped_from = mesh.clip_grad_norm([w, b], 1.0)
    if ctx.tp_rank == inf_on_rank:
        w.grad[0, 0] = math.inf
    return norm, max_norm, clipped_from, w.grad.clone(), b.grad.clone(), mesh.found_inf([w, b])


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_norm_counts_each_parameter_once(tp):
    results = launch(_sharded_grads, -1, tp=tp, timeout_s=30)
    torch.manual_seed(0)
    full_w, bias_grad = torch.randn(8, 6), torch.randn(6)
    serial = torch.cat([full_w.flatten(), bias_grad]).norm().item()
    coef = 1.0 / (serial + 1e-6)
    for rank, (norm, max_norm, clipped_from, w_grad, b_grad, inf) in enumerate(results):
        assert norm == pytest.approx(serial, rel=1e-6)  # not sqrt(serial^2 + (tp-1)|b|^2)
        assert max_norm == pytest.approx(max(full_w.abs().max(), bias_grad.abs().max()).item())
        assert clipped_from == pytest.approx(serial, rel=1e-6)
        rows = 8 // tp
        torch.testing.assert_close(w_grad, full_w[rank * rows:(rank + 1) * rows] * coef)
        torch.testing.assert_close(b_grad, bias_grad * coef)
        assert inf is False


def test_overflow_on_one_rank_skips_the_step_on_all():
    results = launch(_sharded_grads, 1, tp=2, timeout_s=30)
    assert [r[-1] for r in results] == [True, True]


def _wrapped_step(ctx):
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    opt = MixedPrecisionOptimizer(torch.optim.SGD([w], lr=0.1), DynamicLossScaler(init_scale=8.0),
                                  grads=MeshGradients(ctx))
    w.grad = torch.full((4,), math.inf if ctx.tp_rank == 1 else 1.0, dtype=torch.float16)
    return opt.step(), opt.scale, w.detach().clone()


def test_mixed_precision_optimizer_skips_on_every_rank():
    results = launch(_wrapped_step, tp=2, timeout_s=30)
    for stepped, scale, w in results:
        assert stepped is False and scale == 4.0 and torch.equal(w, torch.ones(4, dtype=torch.float16))


def _tp_gpt_grad_norm(ctx, config, x, y):
    from minimt import GPT
    from minimt.parallel.tensor import apply_tensor_parallel
    torch.manual_seed(0)
    model = apply_tensor_parallel(GPT(config), ctx)
    model(x, y)[1].backward()
    return MeshGradients(ctx).get_grad_norm(model.parameters())


def test_grad_norm_of_the_tensor_parallel_gpt_equals_the_serial_norm():
    """minimt.parallel.tensor marks its shards tensor_model_parallel; LayerNorms and row-parallel
    biases stay replicated: the TP norm must equal the serial model's norm."""
    from minimt import GPT
    config = GPTConfig(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True)
    x = torch.randint(16, (2, 8), generator=torch.Generator().manual_seed(0))
    y = torch.randint(16, (2, 8), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    serial = GPT(config)
    serial(x, y)[1].backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in serial.parameters()]).item()
    norms = launch(_tp_gpt_grad_norm, config, x, y, tp=2, timeout_s=30)
    assert norms == pytest.approx([expected] * 2, rel=1e-5)


# ---------------------------------------------------------------- training runs

TINY = GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=32)
STEPS = 40


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return TokenDataset(torch.randint(16, (37,), generator=g).repeat(200), val_fraction=0.1)


def short(steps):
    return TrainConfig(max_iters=steps, batch_size=8, warmup_iters=5, learning_rate=3e-3,
                       eval_iters=4, progress=False)


@pytest.fixture(scope="module")
def fp32_run(data):
    return train_precision("fp32", TINY, data, short(STEPS))


@pytest.mark.parametrize("mode", ["bf16-autocast", "fp16", "fp16-autocast"])
def test_16_bit_training_lands_near_fp32(mode, data, fp32_run):
    """Same seed, same batches: final train loss (mean of the last 10 steps) within 0.05 of fp32,
    and the loss really fell (from ~ln 16 = 2.77)."""
    run = train_precision(mode, TINY, data, short(STEPS))
    tail = sum(run.losses[-10:]) / 10
    ref = sum(fp32_run.losses[-10:]) / 10
    assert ref < 2.0
    assert abs(tail - ref) < 0.05, (mode, tail, ref)
    assert abs(run.val_loss - fp32_run.val_loss) < 0.05


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_fault_injection_skips_halves_and_recovers(bad, data, fp32_run):
    run = train_precision("fp16", TINY, data, short(STEPS), fault_steps=(20,), fault_value=bad)
    assert 20 in run.skipped
    assert run.scales[21] == run.scales[20] / 2
    assert sum(run.losses[-10:]) / 10 == pytest.approx(sum(fp32_run.losses[-10:]) / 10, abs=0.05)


def test_unscaled_fp16_loses_gradients_that_scaling_keeps(data):
    from minimt.model import GPT
    torch.manual_seed(0)
    model = GPT(TINY)
    x, y = data.get_batch("train", 8, 16, torch.Generator().manual_seed(0))
    tiny = gradient_underflow(model, x, y, scale=2.0 ** -12)  # push gradients down on purpose
    unscaled = gradient_underflow(model, x, y, scale=1.0)
    scaled = gradient_underflow(model, x, y, scale=2.0 ** 12)
    assert tiny > unscaled >= scaled
    assert scaled == 0.0 and tiny > 0.01


def test_unknown_mode_is_rejected(data):
    with pytest.raises(ValueError, match="unknown mode"):
        train_precision("fp12", TINY, data, short(10))


# ---------------------------------------------------------------- exercise checkers

@pytest.mark.instructor_only  # model answers: left out of student copies
def test_exercise_checkers_accept_references_and_reject_mistakes():
    from minimt import exercises as ex

    def largest_loss_scale(grads):
        k = math.floor(math.log2(65520 / grads.abs().max().item()))
        return 2.0 ** (k - (grads.abs().max().item() * 2.0 ** k >= 65520))

    ex.check_largest_loss_scale(largest_loss_scale)
    with pytest.raises(ex.ExerciseError, match="overflows to inf"):  # 65504 taken as reachable
        ex.check_largest_loss_scale(lambda g: 2.0 * largest_loss_scale(g))
    with pytest.raises(ex.ExerciseError, match="look for the largest"):
        ex.check_largest_loss_scale(lambda g: largest_loss_scale(g) / 2)

    def skipped(init, top, interval, steps):  # a learner's loop, not the checker's torch scaler
        count, scale = 0, init
        s = DynamicLossScaler(init, 2.0, 0.5, interval)
        for _ in range(steps):
            count += scale > top
            s.update(scale > top)
            scale = s.scale
        return count

    ex.check_skipped_steps(skipped)
    with pytest.raises(ex.ExerciseError, match="each halves the scale"):  # forgets the way down
        ex.check_skipped_steps(lambda i, t, n, s: skipped(min(i, t), t, n, s))
    with pytest.raises(ex.ExerciseError, match="one skip per cycle"):    # never grows again
        ex.check_skipped_steps(lambda i, t, n, s: skipped(i, t, 10 ** 9, s))

    def prune_half(w):
        keep = torch.zeros(w.numel(), dtype=torch.bool)
        keep[w.abs().flatten().argsort(descending=True)[:w.numel() // 2]] = True
        return keep.view_as(w)

    ex.check_prune_half(prune_half)
    def prune_half_signed(w):  # the classic mistake: rank by w instead of |w|
        keep = torch.zeros(w.numel(), dtype=torch.bool)
        keep[w.flatten().argsort(descending=True)[:w.numel() // 2]] = True
        return keep.view_as(w)

    with pytest.raises(ex.ExerciseError, match="absolute value"):
        ex.check_prune_half(prune_half_signed)
