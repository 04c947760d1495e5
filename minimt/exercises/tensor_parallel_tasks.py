"""Tasks of 03_tensor_parallel, written in the package: f, g, the column- and row-parallel layers
(the vocab-parallel loss's tasks are in tensor_parallel_loss_tasks.py). Each runs on 2 gloo
processes against an oracle computed on every rank: sums of seeded tensors, nn.Linear on the
unsplit weight."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import ExerciseError, compare, shape_first, task
TP = 2  # the tasks run on 2 gloo processes


def _safely(ctx, rank_fn, *args):
    """Run rank_fn on this rank; an exception comes back as data, so the checker can explain it."""
    try:
        return rank_fn(ctx, *args)
    except Exception as err:  # the learner's code failed on this rank
        return {"exception": type(err).__name__, "message": str(err)}


def _on_ranks(task_id: str, rank_fn, *args) -> list[dict]:
    """rank_fn(ctx, *args) on TP real processes; a rank's exception becomes a readable failure."""
    from ..parallel import launch
    results = launch(_safely, rank_fn, *args, tp=TP, timeout_s=60)
    for rank, result in enumerate(results):
        if "exception" in result:
            if result["exception"] == "NotImplementedError":
                raise NotImplementedError(result["message"])
            raise ExerciseError(f"task {task_id}, rank {rank}: your code raised "
                                f"{result['exception']}: {result['message']}"
                                + (f". Hint: {result['hint']}" if result.get("hint") else ""))
    return results


def _worst(got, expected) -> str:
    """Where two tensors of one shape differ most: the index, the got and the expected value."""
    diff = (got - expected).abs()
    where = tuple(torch.nonzero(diff == diff.max())[0].tolist())
    return (f"largest error {diff.max().item():.3g} at index {where}: got {got[where].item():.6g}, "
            f"expected {expected[where].item():.6g}")


def _close(a, b, atol=1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol)


def _f_rank(ctx):
    """f = copy_to_tensor_model_parallel_region on one rank: value, gradient, communication."""
    from ..parallel.comm import CommCounter
    from ..parallel.mappings import copy_to_tensor_model_parallel_region
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)                                           # (B, T, C), same everywhere
    upstream = [torch.randn(2, 3, 4) for _ in range(ctx.tp_size)]      # each rank's dL/dy
    x_mine = x.clone().requires_grad_()
    with CommCounter() as counter:
        y = copy_to_tensor_model_parallel_region(x_mine, ctx)
        (y * upstream[ctx.tp_rank]).sum().backward()
    return {"y": y.detach(), "x": x, "grad": x_mine.grad, "upstream": upstream,
            "forward": counter.count("all_reduce", phase="forward"),
            "backward": counter.count("all_reduce", phase="backward")}


def _check_f_task() -> None:
    """f on 2 ranks: y = x exactly; x.grad = the sum of every rank's dL/dy (an all-reduce through
    comm.all_reduce, so the CommCounter sees it)."""
    for rank, r in enumerate(_on_ranks("03.1", _f_rank)):
        name = f"task 03.1, rank {rank} of {TP}"
        shape_first(f"{name}: f(x)", r["y"], tuple(r["x"].shape), "f's forward is the identity")
        if not torch.equal(r["y"], r["x"]):
            hint = ("f's forward is the identity; summing over ranks is g's forward"
                    if _close(r["y"], TP * r["x"]) else "return x unchanged")
            raise ExerciseError(f"{name}: f(x) differs from x. Hint: {hint}")
        if r["forward"]:
            raise ExerciseError(f"{name}: f's forward communicated ({r['forward']} all-reduce); it "
                                f"is the identity, only its backward all-reduces")
        if r["grad"] is None:
            raise ExerciseError(f"{name}: x has no gradient: return a gradient for x from backward")
        expected = sum(r["upstream"])
        shape_first(f"{name}: x.grad", r["grad"], tuple(expected.shape))
        if not _close(r["grad"], expected):
            hint = ("this is only this rank's dL/dy: the backward must all-reduce (sum) it over "
                    "the tensor-parallel ranks" if _close(r["grad"], r["upstream"][rank]) else
                    "x.grad must be the sum over ranks of dL/dy")
            compare_hint = f"largest error {(r['grad'] - expected).abs().max().item():.3g}"
            raise ExerciseError(f"{name}: x.grad wrong ({compare_hint}). Hint: {hint}")
        if r["backward"] != 1:
            raise ExerciseError(f"{name}: {r['backward']} all-reduces counted in the backward, "
                                f"expected 1: use this module's all_reduce(tensor, pctx, 'tp', "
                                f"phase='backward') so the CommCounter sees it")
    print("task 03.1: f is the identity forward and sums the gradient over 2 ranks backward")


def _g_rank(ctx):
    """g = reduce_from_tensor_model_parallel_region on one rank: value, gradient, communication."""
    from ..parallel.comm import CommCounter
    from ..parallel.mappings import reduce_from_tensor_model_parallel_region
    torch.manual_seed(0)
    xs = [torch.randn(2, 3, 4) for _ in range(ctx.tp_size)]            # each rank's partial sum
    upstream = torch.randn(2, 3, 4)                                    # dL/dy, same everywhere
    x_mine = xs[ctx.tp_rank].clone().requires_grad_()
    with CommCounter() as counter:
        y = reduce_from_tensor_model_parallel_region(x_mine, ctx)
        (y * upstream).sum().backward()
    return {"y": y.detach(), "xs": xs, "x after": x_mine.detach(), "grad": x_mine.grad,
            "upstream": upstream, "forward": counter.count("all_reduce", phase="forward"),
            "backward": counter.count("all_reduce", phase="backward")}


def _check_g_task() -> None:
    """g on 2 ranks: y = the sum of every rank's x (one counted all-reduce, x itself untouched);
    x.grad = dL/dy unchanged."""
    for rank, r in enumerate(_on_ranks("03.2", _g_rank)):
        name = f"task 03.2, rank {rank} of {TP}"
        expected = sum(r["xs"])
        shape_first(f"{name}: g(x)", r["y"], tuple(expected.shape), "g's output has x's shape")
        if not _close(r["y"], expected):
            hint = ("this is this rank's x alone: g's forward all-reduces (sums) the partial "
                    "results of every rank" if _close(r["y"], r["xs"][rank]) else
                    "g(x) is the sum over ranks of x")
            raise ExerciseError(f"{name}: g(x) wrong. Hint: {hint}")
        if not torch.equal(r["x after"], r["xs"][rank]):
            raise ExerciseError(f"{name}: g changed its input x in place: all_reduce works in "
                                f"place, so reduce a copy (_fresh(x)) and return that")
        if r["forward"] != 1:
            raise ExerciseError(f"{name}: {r['forward']} all-reduces counted in the forward, "
                                f"expected 1: use this module's all_reduce(..., 'tp', "
                                f"phase='forward') so the CommCounter sees it")
        if r["grad"] is None or not _close(r["grad"], r["upstream"]):
            hint = ("the gradient was summed over ranks: dL/dy is already the same on every rank, "
                    "so g's backward is the identity" if r["grad"] is not None
                    and _close(r["grad"], TP * r["upstream"]) else "return dL/dy unchanged")
            raise ExerciseError(f"{name}: x.grad differs from dL/dy. Hint: {hint}")
        if r["backward"]:
            raise ExerciseError(f"{name}: g's backward communicated; it is the identity")
    print("task 03.2: g sums over 2 ranks forward and passes the gradient through backward")


COLUMN_MODES = {"gather_output=False": dict(gather_output=False),
                "gather_output=True": dict(gather_output=True),
                "sequence_parallel=True": dict(gather_output=False, sequence_parallel=True)}
ROW_MODES = {"input_is_parallel=True": dict(input_is_parallel=True),
             "input_is_parallel=False": dict(input_is_parallel=False),
             "sequence_parallel=True": dict(input_is_parallel=True, sequence_parallel=True)}


def _mode_failed(mode: str, err: Exception, hint: str) -> dict:
    """A rank's RuntimeError in one mode, as data with a hint (the other ranks may still wait)."""
    return {"exception": type(err).__name__, "message": f"{mode}: {err}", "hint": hint}


def _column_rank(ctx):
    """The learner's ColumnParallelLinear on one rank, against nn.Linear on the unsplit weight."""
    import torch.nn.functional as F
    from ..parallel.tensor import ColumnParallelLinear
    out = {}
    for mode, options in COLUMN_MODES.items():
        torch.manual_seed(0)
        serial = torch.nn.Linear(8, 12)                                # A: (out, in) = (12, 8)
        x = torch.randn(2, 4, 8)                                       # (B, T, in)
        upstream = torch.randn(2, 4, 12)                               # dL/dy of L = sum(y * upstream)
        cols = slice(ctx.tp_rank * 12 // ctx.tp_size, (ctx.tp_rank + 1) * 12 // ctx.tp_size)
        tokens = slice(None)
        if options.get("sequence_parallel"):                           # this rank's T/tp tokens
            tokens = slice(ctx.tp_rank * 4 // ctx.tp_size, (ctx.tp_rank + 1) * 4 // ctx.tp_size)
        layer = ColumnParallelLinear(serial, ctx, **options)
        x_mine = x[:, tokens].clone().requires_grad_()
        try:
            y = layer(x_mine)
        except NotImplementedError:
            raise
        except RuntimeError as err:
            return _mode_failed(mode, err, "with sequence_parallel x holds T/tp tokens: gather "
                                "them first (gather_from_sequence_parallel_region)"
                                if options.get("sequence_parallel") else
                                "x (B, T, in) enters through f, then F.linear with this rank's rows")
        gather = options["gather_output"]
        expected_y = serial(x).detach() if gather else serial(x).detach()[..., cols]
        r = {"y": y.detach(), "expected y": expected_y,
             "g at entrance": F.linear(ctx.tp_size * x, layer.weight, layer.bias).detach()}
        if isinstance(y, torch.Tensor) and y.shape == expected_y.shape:
            (y * (upstream if gather else upstream[..., cols])).sum().backward()
            x_ref = x.clone().requires_grad_()
            (serial(x_ref) * upstream).sum().backward()
            r.update({"x grad": x_mine.grad, "expected x grad": x_ref.grad[:, tokens],
                      "weight grad": layer.weight.grad, "expected weight grad": serial.weight.grad[cols],
                      "bias grad": layer.bias.grad, "expected bias grad": serial.bias.grad[cols]})
        out[mode] = r
    return out


def _check_column_task() -> None:
    """ColumnParallelLinear.forward on 2 ranks: output (its slice, or all of it with gather_output)
    and the gradients of x, weight and bias equal nn.Linear's on the unsplit weight; with
    sequence_parallel each rank's x holds T/tp of the tokens."""
    results = _on_ranks("03.3", _column_rank)
    for mode, options in COLUMN_MODES.items():
        for rank, by_mode in enumerate(results):
            r = by_mode[mode]
            t = 4 // TP if options.get("sequence_parallel") else 4
            name = f"task 03.3, rank {rank} of {TP}, {mode}, x (2, {t}, 8) -> 12"
            expected = r["expected y"]
            wrong_shape = ("gather_output=True asks for the whole output on every rank: all-gather "
                           "the slices (gather_from_tensor_model_parallel_region)"
                           if options["gather_output"] else
                           "with sequence_parallel, gather the tokens first "
                           "(gather_from_sequence_parallel_region): y holds all T tokens"
                           if options.get("sequence_parallel") else
                           "gather_output=False leaves y split: return this rank's slice")
            shape_first(f"{name}: output", r["y"], tuple(expected.shape), wrong_shape)
            if not _close(r["y"], expected):
                hint = ("g instead of f at the entrance: g all-reduces x, which is the same on "
                        f"every rank, so the layer sees {TP}*x. f (copy_to_tensor_model_parallel_region) "
                        "is the identity forward" if _close(r["y"], r["g at entrance"])
                        else "y = x A_r^T + b_r with this rank's rows A_r of the weight")
                raise ExerciseError(f"{name}: output differs from nn.Linear's on the unsplit "
                                    f"weight ({_worst(r['y'], expected)}). Hint: {hint}")
            for what in ("x grad", "weight grad", "bias grad"):
                if r[what] is None:
                    raise ExerciseError(f"{name}: no {what}: keep x, the weight and the bias in the "
                                        f"autograd graph (F.linear and the comm functions)")
            if not _close(r["x grad"], r["expected x grad"]):
                partial = not options.get("sequence_parallel") and _close(
                    sum(q[mode]["x grad"] for q in results), r["expected x grad"])
                hint = ("each rank's x.grad holds only its own columns' share: x must enter through "
                        "f (copy_to_tensor_model_parallel_region), whose backward all-reduces it"
                        if partial else "x enters through f, identity forward, sum backward (with "
                        "sequence_parallel: gather_from_sequence_parallel_region, whose backward "
                        "reduce-scatters)")
                raise ExerciseError(f"{name}: x.grad differs from nn.Linear's. Hint: {hint}")
            for what in ("weight grad", "bias grad"):
                compare(f"{name}: {what}", r[what], r[f"expected {what}"], atol=1e-5)
    print(f"task 03.3: ColumnParallelLinear equals nn.Linear (output and gradients) on {TP} ranks: "
          f"{', '.join(COLUMN_MODES)}")


def _row_rank(ctx):
    """The learner's RowParallelLinear on one rank, against nn.Linear on the unsplit weight."""
    import torch.nn.functional as F
    from ..parallel.tensor import RowParallelLinear
    out = {}
    for mode, options in ROW_MODES.items():
        torch.manual_seed(1)
        serial = torch.nn.Linear(12, 8)                                # A: (out, in) = (8, 12)
        x = torch.randn(2, 4, 12)                                      # (B, T, in)
        upstream = torch.randn(2, 4, 8)
        cols = slice(ctx.tp_rank * 12 // ctx.tp_size, (ctx.tp_rank + 1) * 12 // ctx.tp_size)
        tokens = slice(None)
        if options.get("sequence_parallel"):                           # this rank's T/tp tokens
            tokens = slice(ctx.tp_rank * 4 // ctx.tp_size, (ctx.tp_rank + 1) * 4 // ctx.tp_size)
        layer = RowParallelLinear(serial, ctx, **options)
        parallel_in = options["input_is_parallel"]
        x_in = (x[..., cols] if parallel_in else x).clone().requires_grad_()
        partial = F.linear(x[..., cols], layer.weight).detach()[:, tokens]  # this rank's share
        r = {"partial": partial, "bias": serial.bias.detach(), "expected y": serial(x).detach()[:, tokens]}
        try:
            y = layer(x_in)
        except NotImplementedError:
            raise
        except RuntimeError as err:
            return _mode_failed(mode, err, "with input_is_parallel=False x is the whole input: keep "
                                "this rank's columns first (scatter_to_tensor_model_parallel_region)"
                                if not parallel_in else
                                "x holds this rank's in/tp columns, the weight (out, in/tp)")
        r["y"] = y.detach()
        if isinstance(y, torch.Tensor) and y.shape == r["expected y"].shape:
            (y * upstream[:, tokens]).sum().backward()
            x_ref = x.clone().requires_grad_()
            (serial(x_ref) * upstream).sum().backward()
            r.update({"x grad": x_in.grad, "expected x grad": x_ref.grad[..., cols] if
                      parallel_in else x_ref.grad,
                      "weight grad": layer.weight.grad, "expected weight grad": serial.weight.grad[:, cols],
                      "bias grad": layer.bias.grad,
                      "expected bias grad": upstream[:, tokens].sum((0, 1))})  # this rank's tokens
        out[mode] = r
    return out


def _check_row_task() -> None:
    """RowParallelLinear.forward on 2 ranks: output and gradients equal nn.Linear's on the unsplit
    weight, with input_is_parallel True (x already split) and False (scatter first), and with
    sequence_parallel (the output reduce-scattered over the tokens)."""
    results = _on_ranks("03.4", _row_rank)
    for mode, options in ROW_MODES.items():
        for rank, by_mode in enumerate(results):
            r = by_mode[mode]
            name = (f"task 03.4, rank {rank} of {TP}, {mode}, "
                    f"x (2, 4, {12 // TP if options['input_is_parallel'] else 12}) -> 8")
            expected = r["expected y"]
            shape_first(f"{name}: output", r["y"], tuple(expected.shape),
                        "with sequence_parallel the sum is reduce-scattered over the tokens "
                        "(reduce_scatter_to_sequence_parallel_region): (B, T/tp, out)"
                        if options.get("sequence_parallel") else "a row-parallel layer "
                        "returns the whole output (B, T, out) on every rank")
            if not _close(r["y"], expected):
                partial_b = r["partial"] + r["bias"]
                extra = next((k for k in range(1, TP + 2)
                              if _close(r["y"], expected + k * r["bias"])), 0)
                hint = ("this is only this rank's partial sum: all-reduce it with g "
                        "(reduce_from_tensor_model_parallel_region)"
                        if _close(r["y"], partial_b) or _close(r["y"], r["partial"]) else
                        f"the bias is counted {extra + 1} times: add it once, after g has summed the "
                        "partial products" if extra else
                        "the bias is missing: add self.bias once, after the sum"
                        if _close(r["y"], expected - r["bias"]) else "y = g(x_r A_r^T) + b")
                raise ExerciseError(f"{name}: output differs from nn.Linear's on the unsplit "
                                    f"weight ({_worst(r['y'], expected)}). Hint: {hint}")
            for what in ("x grad", "weight grad", "bias grad"):
                if r[what] is None:
                    raise ExerciseError(f"{name}: no {what}: keep x, the weight and the bias in the "
                                        f"autograd graph")
                compare(f"{name}: {what}", r[what], r[f"expected {what}"], atol=1e-5)
    print(f"task 03.4: RowParallelLinear equals nn.Linear (output and gradients) on {TP} ranks: "
          f"{', '.join(ROW_MODES)}")


TASKS = [
    task("03.1", 2, "write f, _CopyToTensorModelParallelRegion (identity forward, all-reduce backward)",
         "minimt.parallel.mappings:_CopyToTensorModelParallelRegion", "notebook 03, section 2", _check_f_task),
    task("03.2", 2, "write g, _ReduceFromTensorModelParallelRegion (all-reduce forward, identity backward)",
         "minimt.parallel.mappings:_ReduceFromTensorModelParallelRegion", "notebook 03, section 2",
         _check_g_task),
    task("03.3", 3, "write ColumnParallelLinear.forward (x through f and F.linear with this rank's rows, or "
         "linear_with_sequence_parallel_input under sequence parallelism; all-gather when gather_output)",
         "minimt.parallel.tensor:ColumnParallelLinear.forward",
         "notebook 03, section 3", _check_column_task),
    task("03.4", 3, "write RowParallelLinear.forward (scatter x unless input_is_parallel; the "
         "partial product summed by g, or reduce-scattered with sequence_parallel; bias once)",
         "minimt.parallel.tensor:RowParallelLinear.forward",
         "notebook 03, section 3", _check_row_task),
]
