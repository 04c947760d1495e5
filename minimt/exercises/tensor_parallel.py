"""Checkers for 03_tensor_parallel: the column-parallel backward by hand, where f and g go,
bytes per layer. They run the learner's code on real gloo processes."""
from __future__ import annotations

from typing import Callable

import torch

from .core import STUB_TASK, ExerciseError, call, compare, shape_first


def _unwritten(exercise: str, rank_error: str) -> ExerciseError:
    """A rank's NotImplementedError: the exercise's own stub, or a package task not written yet."""
    found = STUB_TASK.search(rank_error)
    if found:
        return ExerciseError(f"{exercise} needs task {found.group(1)} first: write it, then check "
                             f"it with minimt.course.check({found.group(1)!r})")
    return ExerciseError(f"{exercise}: not implemented yet (the stub still raises)")


def _on_two_ranks(exercise: str, rank_fn: Callable, fn: Callable) -> list:
    """rank_fn(ctx, fn) on 2 tensor-parallel processes; a stub's NotImplementedError named."""
    from ..parallel import launch  # the exercises run on real processes
    try:
        return launch(rank_fn, fn, tp=2, timeout_s=30)
    except Exception as err:
        if "NotImplementedError" in str(err):
            raise _unwritten(exercise, str(err)) from None
        raise


def _column_backward_rank(ctx, fn):
    """On one rank: the learner's hand-written backward of a column-parallel layer, against the
    gradients autograd gives the serial nn.Linear."""
    torch.manual_seed(0)
    serial = torch.nn.Linear(8, 12)                                    # A: (out, in) = (12, 8)
    x = torch.randn(2, 3, 8)                                           # (B, T, in)
    weights = torch.randn(2, 3, 12)                  # dL/dy of the loss L = sum(y * weights)
    rows = slice(ctx.tp_rank * 12 // ctx.tp_size, (ctx.tp_rank + 1) * 12 // ctx.tp_size)
    x_ref = x.clone().requires_grad_()
    (serial(x_ref) * weights).sum().backward()
    shard_w = serial.weight.detach()[rows].clone()                    # (out/tp, in)
    grad_y = weights[..., rows].clone()                               # (B, T, out/tp)
    with torch.no_grad():
        got = fn(x.clone(), shard_w, grad_y, ctx)
    return {"got": got, "partial input grad": grad_y @ shard_w,       # (B, T, in): this rank's share
            "expected": (x_ref.grad, serial.weight.grad[rows], serial.bias.grad[rows])}


def check_column_parallel_backward(fn: Callable) -> None:
    """fn(x (B, T, in), weight (out/tp, in), grad_y (B, T, out/tp), ctx) -> (grad_x (B, T, in),
    grad_weight (out/tp, in), grad_bias (out/tp,)), run on 2 ranks: the serial nn.Linear's
    gradients (autograd), grad_x whole on every rank, the others this rank's rows."""
    results = _on_two_ranks("check_column_parallel_backward", _column_backward_rank, fn)
    names = ("grad_x", "grad_weight", "grad_bias")
    for rank, r in enumerate(results):
        where = f"check_column_parallel_backward, rank {rank} of 2"
        got = r["got"]
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise ExerciseError(f"{where}: return (grad_x, grad_weight, grad_bias), got "
                                f"{type(got).__name__}")
        hints = {"grad_x": "dL/dx = grad_y A^T needs ALL output columns: each rank's grad_y @ "
                           "weight is only its share; sum the shares over the ranks (an "
                           "all-reduce, what f's backward does: reduce_from_tensor_model_parallel"
                           "_region(partial, ctx) all-reduces in its forward)",
                 "grad_weight": "dL/dA for this rank's rows is grad_y^T x summed over batch and "
                                "sequence: (out/tp, in), no communication",
                 "grad_bias": "dL/db is grad_y summed over batch and sequence: (out/tp,)"}
        for name, value, expected in zip(names, got, r["expected"]):
            shape_first(f"{where}: {name}", value, tuple(expected.shape), hints[name])
            try:
                compare(f"{where}: {name}", value, expected)
            except ExerciseError as err:
                partial = name == "grad_x" and torch.allclose(value, r["partial input grad"],
                                                              atol=1e-5)
                raise ExerciseError(f"{err}. Hint: " + (hints[name] if partial or name != "grad_x"
                                                        else "grad_x = (grad_y of ALL columns) @ "
                                                        "(ALL rows of A), summed over the ranks"))
    print("check_column_parallel_backward: the gradients of x, this rank's rows and bias equal "
          "nn.Linear's autograd on 2 ranks")


def _tp_mlp_rank(ctx, fn):
    """On one rank: the learner's tensor-parallel MLP (no biases) against the serial one."""
    torch.manual_seed(0)
    c_fc, c_proj = torch.nn.Linear(8, 32, bias=False), torch.nn.Linear(32, 8, bias=False)
    x = torch.randn(2, 3, 8)                                           # (B, T, C)
    weights = torch.randn(2, 3, 8)  # dL/dy of L = sum(y * weights)
    cols = slice(ctx.tp_rank * 32 // ctx.tp_size, (ctx.tp_rank + 1) * 32 // ctx.tp_size)
    x_ref = x.clone().requires_grad_()
    y_ref = c_proj(torch.nn.functional.gelu(c_fc(x_ref)))             # (B, T, C)
    (y_ref * weights).sum().backward()
    fc = c_fc.weight.detach()[cols].clone().requires_grad_()          # (4C/tp, C)
    proj = c_proj.weight.detach()[:, cols].clone().requires_grad_()   # (C, 4C/tp)
    x_mine = x.clone().requires_grad_()
    y = fn(x_mine, fc, proj, ctx)
    (y * weights).sum().backward()
    with torch.no_grad():  # this rank's outputs for the classic placements, to name the mistake
        partial = (lambda z: torch.nn.functional.linear(torch.nn.functional.gelu(
            torch.nn.functional.linear(z, fc)), proj))                 # (B, T, C), not summed
        mistakes = {"swapped": partial(ctx.tp_size * x), "no g": partial(x),
                    "g at entrance": c_proj(torch.nn.functional.gelu(c_fc(ctx.tp_size * x)))}
    return {"output": y.detach(), "expected output": y_ref.detach(), "mistakes": mistakes,
            "input grad": x_mine.grad, "expected input grad": x_ref.grad,
            "fc grad": fc.grad, "expected fc grad": c_fc.weight.grad[cols],
            "proj grad": proj.grad, "expected proj grad": c_proj.weight.grad[:, cols]}


def _mlp_hint(what: str, results: list[dict], rank: int, tp: int) -> str | None:
    got, expected = results[rank][what], results[rank][f"expected {what}"]
    if what == "output":
        mistakes = results[rank]["mistakes"]
        if torch.allclose(got, mistakes["swapped"], atol=1e-5):
            return ("f and g are swapped: g at the entrance all-reduces x, which is already the "
                    f"same on every rank (so the layer sees {tp}*x), and f at the exit leaves the "
                    "row-parallel partial sums un-added. Put f at the entrance, g at the exit")
        if torch.allclose(got, mistakes["no g"], atol=1e-5):
            return ("each rank holds only its partial sum: the row-parallel c_proj's output must "
                    "be all-reduced in the forward (g, reduce_from_tensor_model_parallel_region)")
        if torch.allclose(got, mistakes["g at entrance"], atol=1e-5):
            return (f"the entrance all-reduces x, which is the same on every rank (the layer sees "
                    f"{tp}*x): f (identity forward) goes there, not g")
        return None
    grads = [r[what] for r in results]
    if torch.allclose(got, tp * expected, atol=1e-5):
        return (f"the input gradient is {tp}x too large: the exit's op all-reduces in the backward "
                f"a gradient that is already the same on every rank; g (identity backward) goes "
                f"there")
    if torch.allclose(sum(grads), expected, atol=1e-5):
        return ("each rank holds only its part of the input gradient: it must be all-reduced in "
                "the backward (f, copy_to_tensor_model_parallel_region) at the entrance")
    return None


def check_tp_mlp_operators(fn: Callable) -> None:
    """fn(x (B, T, C), fc_weight (4C/tp, C), proj_weight (C, 4C/tp), ctx) -> y (B, T, C): Megatron's
    MLP, column-parallel c_fc, GELU, row-parallel c_proj, with f and g where they belong. Run on 2
    ranks; output, input gradient and both weight gradients must equal the serial MLP's."""
    results = _on_two_ranks("check_tp_mlp_operators", _tp_mlp_rank, fn)
    for what in ("output", "input grad", "fc grad", "proj grad"):
        for rank, r in enumerate(results):
            if r[what] is None:
                raise ExerciseError(f"rank {rank}: no {what}: keep x and the weights in the graph")
            try:
                compare(f"check_tp_mlp_operators, rank {rank}: {what}", r[what],
                        r[f"expected {what}"], atol=1e-5)
            except ExerciseError as err:
                hint = _mlp_hint(what, results, rank, 2) if what in ("output", "input grad") \
                    else None
                raise ExerciseError(f"{err}. Hint: {hint}" if hint else str(err)) from None
    print("check_tp_mlp_operators: output and all gradients equal the serial MLP's on 2 ranks")


def _bytes_per_layer(b: int, s: int, h: int, tp: int, bytes_per_element: int) -> tuple[int, int]:
    """Reference: 2 all-reduces of (b, s, h) forward, 2 backward; none when tp == 1."""
    per_all_reduce = b * s * h * bytes_per_element
    return (0, 0) if tp == 1 else (2 * per_all_reduce, 2 * per_all_reduce)


def check_bytes_per_layer(fn: Callable) -> None:
    """fn(b, s, h, tp, bytes_per_element) -> (forward_bytes, backward_bytes): the data one rank
    all-reduces for one transformer layer (attention + MLP) in one training step."""
    cases = [(4, 64, 128, 4, 4), (8, 128, 256, 2, 4), (1, 2048, 20480, 8, 2), (2, 16, 32, 1, 4),
             (3, 5, 7, 2, 4)]
    for i, case in enumerate(cases):
        got = call("check_bytes_per_layer", fn, *case)
        expected = _bytes_per_layer(*case)
        if tuple(got) == expected:
            continue
        b, s, h, tp, nbytes = case
        one = b * s * h * nbytes
        forward = tuple(got)[0]
        hint = ("with tp = 1 there is nobody to reduce with: no communication" if tp == 1 else
                "count both g's: one after attention, one after the MLP" if forward == one else
                "an all-reduce's tensor is the whole (b, s, h) activation on every rank; it does "
                "not shrink with tp" if forward in (2 * one // tp, one // tp) else
                f"multiply elements by bytes_per_element={nbytes}" if forward == 2 * b * s * h
                else None)
        message = (f"check_bytes_per_layer, case {i + 1} of {len(cases)} (b={b}, s={s}, h={h}, "
                   f"tp={tp}, {nbytes} bytes per element): got {tuple(got)}, expected {expected}")
        raise ExerciseError(f"{message}. Hint: {hint}" if hint else message)
    print(f"check_bytes_per_layer: all {len(cases)} cases pass")

