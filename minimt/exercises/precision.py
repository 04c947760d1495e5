"""Checkers for 05_mixed_precision: the largest loss scale, the steps the dynamic scaler skips,
pruning to half, and the tasks DynamicLossScaler.update (oracle: torch.amp.GradScaler's decisions)
and MixedPrecisionOptimizer.step (oracle: torch's optimizer on an fp32 copy of the weights)."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .core import ExerciseError, call, compare, learner, task


def gradscaler_trace(pattern, init_scale, growth_factor, backoff_factor, growth_interval):
    """Oracle: (scale, growth tracker) after each step of torch.amp.GradScaler, overflowing
    where `pattern` is True."""
    weight = torch.nn.Parameter(torch.ones(1))
    sgd = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_factor=growth_factor,
                                  backoff_factor=backoff_factor, growth_interval=growth_interval)
    trace = []
    for overflow in pattern:
        sgd.zero_grad()
        scaler.scale((weight * (math.inf if overflow else 1.0)).sum()).backward()
        scaler.step(sgd)
        scaler.update()
        trace.append((scaler.get_scale(), scaler._get_growth_tracker()))
    return trace


def check_largest_loss_scale(fn: Callable) -> None:
    """fn(grads: Tensor) -> float: the largest power of two S for which no gradient overflows
    when `grads * S` is cast to fp16; oracle: a search over the powers of two, cast with torch's
    own float16."""
    def largest_loss_scale(grads):
        values = grads.double()
        return next(2.0 ** k for k in range(127, -150, -1)
                    if torch.isfinite((values * 2.0 ** k).to(torch.float16)).all())

    g = torch.Generator().manual_seed(0)
    cases = [(torch.tensor([1.0, -3.0]),), (torch.tensor([65504.0, 1e-3]),),
             (torch.tensor([1e-3, 2.0 ** -30, 0.0]),), (torch.tensor([65519.0 / 4, -0.5]),),
             (torch.randn(1000, generator=g) * 1e-6,)]
    for i, (grads,) in enumerate(cases):
        got = call("check_largest_loss_scale", fn, grads)
        expected = largest_loss_scale(grads)
        if got != expected:
            overflowing = (not torch.isfinite((grads.double() * float(got)).to(torch.float16)).all()
                           if isinstance(got, (int, float)) else None)
            hint = ("with that S the largest gradient overflows to inf: S is too large"
                    if overflowing else "twice that S still keeps every gradient finite: look for "
                    "the largest" if overflowing is False else "return a float power of two")
            raise ExerciseError(f"check_largest_loss_scale, case {i + 1} of {len(cases)}: got "
                                f"{got!r}, expected {expected!r}; {hint}. Remember: fp16's largest "
                                f"value is 65504, and anything below 65520 still rounds to it")
    print(f"check_largest_loss_scale: all {len(cases)} cases pass")


def _skipped_steps(init_scale, max_scale, growth_interval, steps) -> int:
    """Oracle: torch.amp.GradScaler (growth 2, backoff 0.5) stepped `steps` times, each step
    overflowing when the scale it runs at is above max_scale; the skipped steps counted."""
    skipped, scale = 0, init_scale
    weight = torch.nn.Parameter(torch.ones(1))
    sgd = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)
    for _ in range(steps):
        overflow = scale > max_scale
        sgd.zero_grad()
        scaler.scale((weight * (math.inf if overflow else 1.0)).sum()).backward()
        scaler.step(sgd)
        scaler.update()
        skipped, scale = skipped + overflow, scaler.get_scale()
    return skipped


def check_skipped_steps(fn: Callable) -> None:
    """fn(init_scale, max_scale, growth_interval, steps) -> int: how many of the first `steps`
    steps the dynamic loss scaler skips when every step at a scale above max_scale overflows."""
    cases = [(65536.0, 1024.0, 20, 100), (256.0, 1024.0, 10, 60), (1024.0, 1024.0, 1, 10),
             (2.0 ** 24, 8.0, 5, 80), (65536.0, 1024.0, 2000, 3), (8.0, 64.0, 20, 59),
             (8.0, 64.0, 20, 81)]   # few steps: torch's scaler takes about a millisecond a step
    for i, args in enumerate(cases):
        got = call("check_skipped_steps", fn, *args)
        expected = _skipped_steps(*args)
        if got != expected:
            init, top, interval, steps = args
            halvings = max(0, round(math.log2(init / top)))
            hint = ("the first steps, above max_scale, are skipped too: each halves the scale" if
                    got == expected - min(halvings, steps) else
                    "at max_scale the scaler doubles after growth_interval clean steps, and the "
                    "step at twice max_scale overflows: one skip per cycle" if got < expected else
                    "a cycle at max_scale is growth_interval clean steps plus the skipped one; a "
                    "scale below max_scale first climbs, growth_interval clean steps per doubling")
            raise ExerciseError(f"check_skipped_steps, case {i + 1} of {len(cases)} (init_scale="
                                f"{init}, max_scale={top}, growth_interval={interval}, steps="
                                f"{steps}): got {got!r}, expected {expected}. Hint: {hint}")
    print(f"check_skipped_steps: all {len(cases)} cases pass (torch.amp.GradScaler, stepped)")


def check_prune_half(fn: Callable) -> None:
    """fn(weight: Tensor) -> bool mask of the same shape keeping the 50% of entries with the
    largest |w| (magnitude pruning of one matrix to 50%)."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.tensor([[0.3, -2.0], [0.1, -0.05]]), torch.randn(8, 6, generator=g),
               torch.randn(32, 16, generator=g) * 0.02]

    from torch.nn.utils import prune

    def reference(w):  # torch's own magnitude pruning of half the entries
        holder = torch.nn.Linear(1, 1, bias=False)
        holder.weight = torch.nn.Parameter(w.clone())
        prune.l1_unstructured(holder, "weight", amount=0.5)
        return holder.weight_mask.bool()

    for i, w in enumerate(weights):
        got = call("check_prune_half", fn, w.clone())
        if isinstance(got, torch.Tensor) and got.shape == w.shape and got.dtype == torch.bool:
            if got.sum().item() != w.numel() // 2:
                raise ExerciseError(f"check_prune_half, case {i + 1}: the mask keeps "
                                    f"{got.sum().item()} of {w.numel()} entries, expected half")
            kept, dropped = w.abs()[got], w.abs()[~got]
            if kept.min() < dropped.max():
                raise ExerciseError(f"check_prune_half, case {i + 1}: kept |w|={kept.min():.3g} "
                                    f"but dropped the larger |w|={dropped.max():.3g}: rank by "
                                    "absolute value (a large negative weight matters too)")
        compare(f"check_prune_half, case {i + 1} of {len(weights)}", got, reference(w))
    print(f"check_prune_half: all {len(weights)} cases pass")


# ---------------------------------------------------------------------------- tasks in the package

SCALER_CASES = [  # (pattern of overflows, init_scale, growth_factor, backoff_factor, growth_interval)
    ([False] * 7 + [True, True] + [False] * 4, 2.0 ** 16, 2.0, 0.5, 3),
    ([True, False, False, True, False], 8.0, 4.0, 0.25, 2),
    ([False] * 5, 1.0, 2.0, 0.5, 1),
    ([False, False], 2.0 ** 127, 2.0, 0.5, 1),   # growing would overflow fp32: GradScaler keeps it
    ([False, False, True, False, False, True], 1000.0, 3.0, 0.25, 2),  # backoff != 1 / growth
]


def _check_scaler_task() -> None:
    """DynamicLossScaler.update: after every step, the scale and the growth tracker equal
    torch.amp.GradScaler's on the same pattern of overflows."""
    scaler_class = learner("minimt.precision:DynamicLossScaler")
    for i, (pattern, *settings) in enumerate(SCALER_CASES):
        scaler = scaler_class(*settings)
        expected = gradscaler_trace(pattern, *settings)
        for step, (found_inf, (scale, tracker)) in enumerate(zip(pattern, expected)):
            before = (scaler.scale, scaler.growth_tracker)
            scaler.update(found_inf)
            got = (scaler.scale, scaler.growth_tracker)
            if got != (scale, tracker):
                hint = ("on overflow: scale * backoff_factor and the tracker back to 0" if found_inf
                        else "a scale that would overflow fp32 (> 3.4e38) is not taken; the "
                        "tracker still resets" if math.isinf(before[0] * settings[1]) or
                        before[0] * settings[1] > torch.finfo(torch.float32).max else
                        "grow only when the tracker reaches growth_interval, then reset it to 0"
                        if before[1] + 1 == settings[3] else "a finite step only counts: tracker + 1")
                raise ExerciseError(
                    f"task 05.2, case {i + 1} of {len(SCALER_CASES)} (init_scale={settings[0]}, "
                    f"growth_factor={settings[1]}, backoff_factor={settings[2]}, growth_interval="
                    f"{settings[3]}), step {step + 1}: found_inf={found_inf}, from (scale, tracker) "
                    f"= {before}: got {got}, torch.amp.GradScaler has {(scale, tracker)}. Hint: {hint}")
    print(f"task 05.2: DynamicLossScaler decides as torch.amp.GradScaler in {len(SCALER_CASES)} runs")


class _SpyScaler:
    """A fixed loss scale that records the overflow flags the optimizer reports."""

    def __init__(self, scale):
        self.scale, self.reported = scale, []

    def update(self, found_inf):
        self.reported.append(bool(found_inf))


def _master_case(name, make_optimizer, dtype, scale, clip, overflow_at, steps=4):
    """Run the learner's MixedPrecisionOptimizer on a 16-bit model and torch's optimizer on an fp32
    copy fed the same unscaled gradients; raise on the first difference."""
    wrapper_class = learner("minimt.precision:MixedPrecisionOptimizer")
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3).to(dtype)                            # 16-bit weights
    reference = [p.detach().float().clone().requires_grad_() for p in model.parameters()]
    spy = _SpyScaler(scale)
    optimizer = wrapper_class(make_optimizer(list(model.parameters())), spy, clip_grad=clip)
    reference_optimizer = make_optimizer(reference)
    for step in range(steps):
        x = torch.randn(5, 6).to(dtype)
        loss = model(x).float().pow(2).mean()
        (loss * scale).backward()                                       # scaled, in 16 bits
        grads = [p.grad.float() / scale for p in model.parameters()]
        if step == overflow_at:
            model.weight.grad[0, 0] = math.inf
        stepped = optimizer.step()
        where = f"task 05.1, {name}, step {step + 1}"
        if step == overflow_at:
            if stepped is not False or spy.reported[-1:] != [True]:
                raise ExerciseError(f"{where}: a gradient is inf: report found_inf=True to the "
                                    f"scaler, skip the update and return False (got {stepped!r}, "
                                    f"reported {spy.reported[-1:]})")
        else:
            if stepped is not True:
                raise ExerciseError(f"{where}: a finite step returns True, got {stepped!r}")
            if spy.reported[-1:] != [False]:
                raise ExerciseError(f"{where}: tell the loss scaler whether the gradients "
                                    f"overflowed: loss_scaler.update(found_inf) every step")
            for p, g in zip(reference, grads):
                p.grad = g
            if clip:
                torch.nn.utils.clip_grad_norm_(reference, clip)
            reference_optimizer.step()
        if dtype != torch.float32 and any(p.grad is not None for p in model.parameters()):
            raise ExerciseError(f"{where}: the 16-bit gradients must be freed (p.grad = None) "
                                f"once copied to the fp32 master gradients")
        for k, (mine, theirs) in enumerate(zip(optimizer.master_params, reference)):
            if mine.dtype != torch.float32:
                raise ExerciseError(f"{where}: master weight {k} is {mine.dtype}; masters are fp32")
            if not torch.allclose(mine.detach(), theirs.detach(), atol=1e-6, rtol=1e-5):
                hint = ("the update happened on a step with an inf gradient: skip it"
                        if step == overflow_at else
                        "update the fp32 masters with the fp32 gradients divided by the loss scale S"
                        + (", clipped to the norm clip_grad" if clip else ""))
                raise ExerciseError(f"{where}: master weight {k} differs from torch's optimizer on "
                                    f"an fp32 copy (largest error "
                                    f"{(mine.detach() - theirs.detach()).abs().max().item():.3g}). "
                                    f"Hint: {hint}")
        for k, (p, master) in enumerate(zip(model.parameters(), optimizer.master_params)):
            if not torch.equal(p.detach(), master.detach().to(dtype)):
                raise ExerciseError(f"{where}: model weight {k} ({dtype}) is not the master rounded "
                                    f"to {dtype}: copy the masters back into the model after the step")


def _check_master_step_task() -> None:
    """MixedPrecisionOptimizer.step: fp32 master weights updated by torch's own optimizer on an
    fp32 copy (unscaled gradients, clipping), overflow steps skipped, 16-bit weights = rounded masters."""
    cases = [("SGD with momentum, fp16, S=1024", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
              torch.float16, 1024.0, None, 2),
             ("AdamW, bf16, S=1, clip 0.05", lambda ps: torch.optim.AdamW(ps, lr=1e-2), torch.bfloat16,
              1.0, 0.05, None),
             ("AdamW, fp16, S=65536, clip 1.0", lambda ps: torch.optim.AdamW(ps, lr=1e-3), torch.float16,
              65536.0, 1.0, 1),
             ("SGD, fp32 parameters (their own masters, as under autocast), S=256",
              lambda ps: torch.optim.SGD(ps, lr=0.1), torch.float32, 256.0, None, 2)]
    for case in cases:
        _master_case(*case)
    print(f"task 05.1: MixedPrecisionOptimizer.step equals torch's optimizers on fp32 copies in "
          f"{len(cases)} runs, overflow steps skipped")


TASKS = [
    task("05.1", 3, "write MixedPrecisionOptimizer.step (fp32 master weights, unscale, skip, copy back)",
         "minimt.precision:MixedPrecisionOptimizer.step", "notebook 05, section 3",
         _check_master_step_task),
    task("05.2", 2, "write DynamicLossScaler.update (back off on overflow, grow after growth_interval)",
         "minimt.precision:DynamicLossScaler.update", "notebook 05, section 4", _check_scaler_task),
]
