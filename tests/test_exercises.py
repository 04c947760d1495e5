# course: instructor only (model answers to the exercises; left out of student copies)
"""The exercise checkers accept a correct answer and reject wrong ones with a message that says
what is wrong (so a check can never be a no-op)."""
import math

import pytest
import torch

from minimt.attention import local_mask
from minimt.exercises import (ExerciseError, check_alibi_attention, check_dilated_mask,
                              check_prefix_lm_mask)


# --- check_alibi_attention ---------------------------------------------------------------------

def alibi_attention(q, k, v, slopes, sign=-1.0, causal=True):
    """A learner's answer, written independently of the checker's loop (sign/causal: mistakes)."""
    t = q.shape[-2]
    distance = torch.arange(t)[:, None] - torch.arange(t)[None, :]     # (T, T): i - j
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])          # (B, H, T, T)
    scores = scores + sign * slopes[:, None, None] * distance
    if causal:
        scores = scores.masked_fill(distance < 0, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v                           # (B, H, T, D)


def test_check_alibi_attention_accepts_the_formula(capsys):
    check_alibi_attention(alibi_attention)
    assert "check_alibi_attention: all 4 cases pass" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda q, k, v, m: alibi_attention(q, k, v, m, sign=1.0), "wrong sign"),
    (lambda q, k, v, m: alibi_attention(q, k, v, m, sign=0.0), "no bias"),
    (lambda q, k, v, m: alibi_attention(q, k, v, m, causal=False), "no causal mask"),
    (lambda q, k, v, m: alibi_attention(q * math.sqrt(q.shape[-1]), k, v, m), "no 1/sqrt"),
    (lambda q, k, v, m: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
     "no bias"),
])
def test_check_alibi_attention_names_common_bugs(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_alibi_attention(wrong)


def test_check_alibi_attention_rejects_small_errors_shapes_and_stubs():
    with pytest.raises(ExerciseError, match="values differ"):
        check_alibi_attention(lambda q, k, v, m: alibi_attention(q, k, v, m) + 1e-5)
    with pytest.raises(ExerciseError, match="shape"):
        check_alibi_attention(lambda q, k, v, m: alibi_attention(q, k, v, m).transpose(1, 2))
    with pytest.raises(ExerciseError, match="not implemented yet"):
        check_alibi_attention(lambda q, k, v, m: (_ for _ in ()).throw(NotImplementedError))


# --- check_prefix_lm_mask / check_dilated_mask ---------------------------------------------------

def prefix_lm(t, p):
    positions = torch.arange(t)
    return (positions[None, :] <= positions[:, None]) | (positions < p)[None, :]


def test_check_prefix_lm_mask_accepts_a_prefix_lm(capsys):
    check_prefix_lm_mask(prefix_lm)
    assert "check_prefix_lm_mask: all 6 cases pass" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda t, p: torch.ones(t, t, dtype=torch.bool).tril(), "this is the causal mask"),
    (lambda t, p: prefix_lm(t, p) | (torch.arange(t) < p)[:, None], "must not see past the prefix"),
    (lambda t, p: prefix_lm(t, p + 1), "one position too many"),
    (lambda t, p: prefix_lm(t, p).T, "transposed"),
    (lambda t, p: prefix_lm(t, p).float(), "return a bool tensor"),
    (lambda t, p: prefix_lm(t + 1, p), "shape"),
])
def test_check_prefix_lm_mask_rejects_wrong_masks(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_prefix_lm_mask(wrong)


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
