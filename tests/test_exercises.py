# course: instructor only (model answers to the exercises; left out of student copies)
"""The exercise checkers accept a correct answer and reject wrong ones with a message that says
what is wrong (so a check can never be a no-op)."""
import math

import pytest
import torch

from minimt.attention import causal_mask, local_mask
from minimt.exercises import (ExerciseError, check_attention, check_causal_mask,
                              check_dilated_mask)


# --- check_attention ---------------------------------------------------------------------------

def formula_attention(q, k, v, mask):
    """A learner's correct answer, written independently of minimt's code."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])            # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v                              # (B, H, Tq, D)


def softmax_over_queries(q, k, v, mask):
    """A classic bug: normalising each key's column instead of each query's row."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])            # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-2).nan_to_num(0.0) @ v


def test_check_attention_accepts_the_formula(capsys):
    check_attention(formula_attention)
    assert "check_attention: all 4 cases pass" in capsys.readouterr().out


def test_check_attention_accepts_torch_sdpa():
    check_attention(lambda q, k, v, mask: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask))


@pytest.mark.parametrize("wrong, hint", [
    (lambda q, k, v, m: formula_attention(q * math.sqrt(q.shape[-1]), k, v, m), "no 1/sqrt"),
    (lambda q, k, v, m: formula_attention(q / math.sqrt(q.shape[-1]), k, v, m), "divided by d_k"),
    (lambda q, k, v, m: formula_attention(q, k, v, None), "the mask is ignored"),
    (lambda q, k, v, m: formula_attention(q, k, v, None if m is None else ~m).nan_to_num(0.0),
     "the mask is inverted"),
    (lambda q, k, v, m: softmax_over_queries(q, k, v, m), "wrong axis"),
])
def test_check_attention_names_common_bugs(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_attention(wrong)


def test_check_attention_rejects_small_errors_and_wrong_shapes():
    with pytest.raises(ExerciseError, match="values differ"):
        check_attention(lambda q, k, v, m: formula_attention(q, k, v, m) + 1e-5)
    with pytest.raises(ExerciseError, match="shape"):
        check_attention(lambda q, k, v, m: formula_attention(q, k, v, m).transpose(1, 2))
    with pytest.raises(ExerciseError, match="expected a torch.Tensor, got tuple"):
        check_attention(lambda q, k, v, m: (formula_attention(q, k, v, m), None))


def test_check_attention_reports_an_unfinished_stub():
    def stub(q, k, v, mask):
        raise NotImplementedError

    with pytest.raises(ExerciseError, match="not implemented yet"):
        check_attention(stub)


def test_check_attention_catches_a_bug_that_shows_only_with_a_mask():
    def ignores_mask(q, k, v, mask):
        return formula_attention(q, k, v, None)

    with pytest.raises(ExerciseError, match="case 2 of 4"):  # case 1 has no mask and passes
        check_attention(ignores_mask)


# --- check_causal_mask / check_dilated_mask ------------------------------------------------------

def test_check_causal_mask_accepts_tril(capsys):
    check_causal_mask(lambda t: torch.ones(t, t, dtype=torch.bool).tril())
    assert "check_causal_mask: all 4 cases pass" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda t: torch.ones(t, t, dtype=torch.bool).triu(), "see the future"),
    (lambda t: torch.ones(t, t, dtype=torch.bool).tril(-1), "attend to itself"),
    (lambda t: torch.ones(t, t, dtype=torch.bool), "nothing is masked"),
    (lambda t: torch.ones(t, t).tril(), "return a bool tensor"),
    (lambda t: causal_mask(t + 1), "shape"),
])
def test_check_causal_mask_rejects_wrong_masks(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_causal_mask(wrong)


def dilated_band(t, window, dilation):
    distance = torch.arange(t)[:, None] - torch.arange(t)[None, :]     # (T, T): i - j
    return (distance >= 0) & (distance < window * dilation) & (distance % dilation == 0)


def test_check_dilated_mask_accepts_a_band(capsys):
    check_dilated_mask(dilated_band)
    assert "check_dilated_mask: all 6 cases pass" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda t, w, d: local_mask(t, w), "this is the plain window"),
    (lambda t, w, d: dilated_band(t, w + 1, d), "one key too many"),
    (lambda t, w, d: dilated_band(t, w, d) & local_mask(t, w), "counts keys, not positions"),
    (lambda t, w, d: dilated_band(t, w, d) | dilated_band(t, w, d).T, "looks ahead"),
    (lambda t, w, d: dilated_band(t, w, d).int(), "return a bool tensor"),
])
def test_check_dilated_mask_rejects_wrong_masks(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_dilated_mask(wrong)
