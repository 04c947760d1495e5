# course: instructor only (model answers to the exercises; left out of student copies)
"""Notebook 03's checkers pass a correct answer and reject the classic mistakes with a hint
(missing f, f and g swapped, an all-reduce that shrinks with tp)."""
import pytest
import torch
import torch.nn.functional as F

from minimt.exercises import (ExerciseError, check_bytes_per_layer, check_column_parallel_backward,
                              check_tp_mlp_operators)
from minimt.parallel import (copy_to_tensor_model_parallel_region as f,
                             reduce_from_tensor_model_parallel_region as g)


def column_backward(x, weight, grad_y, ctx):
    """A learner's answer: the input gradient's shares summed over the ranks by g's all-reduce."""
    grad_x = g(torch.einsum("bto,oi->bti", grad_y, weight), ctx)        # (B, T, in)
    grad_weight = torch.einsum("bto,bti->oi", grad_y, x)                # (out/tp, in)
    return grad_x, grad_weight, grad_y.sum(dim=(0, 1))


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("wrong, message", [
    (lambda x, w, gy, ctx: (gy @ w, *column_backward(x, w, gy, ctx)[1:]), "sum the shares"),
    (lambda x, w, gy, ctx: (column_backward(x, w, gy, ctx)[0], x.flatten(0, 1).T @ gy.flatten(0, 1),
                            gy.sum(dim=(0, 1))), r"grad_weight: shape \(8, 6\), expected \(6, 8\)"),
    (lambda x, w, gy, ctx: (*column_backward(x, w, gy, ctx)[:2], gy), "grad_bias: shape"),
    (lambda x, w, gy, ctx: column_backward(x, w, gy, ctx)[0], "return \\(grad_x, grad_weight"),
    (stub, "not implemented"),
], ids=["no-all-reduce", "weight-transposed", "bias-not-summed", "one-value", "stub"])
def test_column_parallel_backward(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        check_column_parallel_backward(wrong)


def test_column_parallel_backward_accepts_an_answer(capsys):
    check_column_parallel_backward(column_backward)
    assert "equal nn.Linear's autograd on 2 ranks" in capsys.readouterr().out


def mlp(x, fc, proj, ctx):
    return g(F.linear(F.gelu(F.linear(f(x, ctx), fc)), proj), ctx)


def mlp_swapped(x, fc, proj, ctx):  # g at the entrance, f at the exit
    return f(F.linear(F.gelu(F.linear(g(x, ctx), fc)), proj), ctx)


def mlp_without_f(x, fc, proj, ctx):  # same forward, wrong input gradient
    return g(F.linear(F.gelu(F.linear(x, fc)), proj), ctx)


def test_tp_mlp_operators():
    check_tp_mlp_operators(mlp)
    with pytest.raises(ExerciseError, match="f and g are swapped"):
        check_tp_mlp_operators(mlp_swapped)
    with pytest.raises(ExerciseError, match="input grad.*all-reduced in the backward"):
        check_tp_mlp_operators(mlp_without_f)


def test_bytes_per_layer():
    check_bytes_per_layer(lambda b, s, h, tp, n: (0, 0) if tp == 1 else (2 * b * s * h * n,) * 2)
    with pytest.raises(ExerciseError, match="does not shrink with tp"):
        check_bytes_per_layer(lambda b, s, h, tp, n: (2 * b * s * h * n // tp,) * 2)
    with pytest.raises(ExerciseError, match="both g's"):
        check_bytes_per_layer(lambda b, s, h, tp, n: (b * s * h * n,) * 2)
    with pytest.raises(ExerciseError, match="tp = 1"):
        check_bytes_per_layer(lambda b, s, h, tp, n: (2 * b * s * h * n,) * 2)
    with pytest.raises(ExerciseError, match="not implemented"):
        check_bytes_per_layer(stub)


def mlp_g_twice(x, fc, proj, ctx):  # g at the entrance too: the layer sees 2x
    return g(F.linear(F.gelu(F.linear(g(x, ctx), fc)), proj), ctx)


def mlp_without_g(x, fc, proj, ctx):
    return F.linear(F.gelu(F.linear(f(x, ctx), fc)), proj)


class _AllReduceBothWays(torch.autograd.Function):
    """A wrong g: all-reduce forward and backward."""

    @staticmethod
    def forward(ctx, x, pctx):
        ctx.pctx = pctx
        return g(x, pctx).detach()

    @staticmethod
    def backward(ctx, grad):
        return g(grad, ctx.pctx), None


def mlp_symmetric_exit(x, fc, proj, ctx):  # right output, input gradient 2x too large
    return _AllReduceBothWays.apply(F.linear(F.gelu(F.linear(f(x, ctx), fc)), proj), ctx)


def test_tp_mlp_operators_name_each_mistake():
    with pytest.raises(ExerciseError, match="input gradient is 2x too large"):
        check_tp_mlp_operators(mlp_symmetric_exit)
    with pytest.raises(ExerciseError, match="f .identity forward. goes there, not g"):
        check_tp_mlp_operators(mlp_g_twice)
    with pytest.raises(ExerciseError, match="only its partial sum"):
        check_tp_mlp_operators(mlp_without_g)
    with pytest.raises(ExerciseError, match="not implemented"):
        check_tp_mlp_operators(stub)
