# course: instructor only (model answers to the exercises; left out of student copies)
"""The 02_gpt exercise checkers accept independent correct answers and reject typical mistakes
with a hint (so a check can never be a no-op)."""
import math

import pytest
import torch.nn.functional as F

from minimt.exercises import (ExerciseError, check_first_step_below, check_llama_param_count,
                              check_lm_loss)


def llama_count(vocab, layers, C, F):
    """A learner's correct closed form, written from the architecture, not from the checker."""
    attention, swiglu, norms = 4 * C * C, C * F + C * F + F * C, 2 * C
    return vocab * C + layers * (attention + swiglu + norms) + C + C * vocab


def test_llama_param_count_checker(capsys):
    check_llama_param_count(llama_count)
    assert "all 4 cases pass" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="NOT tied"):
        check_llama_param_count(lambda v, n, c, f: llama_count(v, n, c, f) - v * c)
    with pytest.raises(ExerciseError, match="three matrices"):
        check_llama_param_count(lambda v, n, c, f: llama_count(v, n, c, f) - n * c * f)
    with pytest.raises(ExerciseError, match="gain only"):
        check_llama_param_count(lambda v, n, c, f: llama_count(v, n, c, f) + (2 * n + 1) * c)
    with pytest.raises(ExerciseError, match="not implemented"):
        check_llama_param_count(lambda v, n, c, f: (_ for _ in ()).throw(NotImplementedError))


def first_step(target, lr, w, d, m):
    """A learner's closed form: solve the cosine for r, round the step up."""
    return w + math.ceil(math.acos(2 * (target - m) / (lr - m) - 1) / math.pi * (d - w))


def test_first_step_below_checker(capsys):
    check_first_step_below(first_step)
    assert "all 6 cases pass" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="round up"):
        check_first_step_below(lambda *a: first_step(*a) - 1)
    with pytest.raises(ExerciseError, match="count from step 0"):
        check_first_step_below(lambda t, lr, w, d, m: first_step(t, lr, w, d, m) - w)
    with pytest.raises(ExerciseError, match="check_first_step_below"):  # decays to 0, not min_lr
        check_first_step_below(lambda t, lr, w, d, m: first_step(t, lr, w, d, 0.0))


def test_lm_loss_checker():
    check_lm_loss(lambda logits, idx: F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1)))
    with pytest.raises(ExerciseError, match="without the shift"):
        check_lm_loss(lambda logits, idx: F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                          idx.reshape(-1)))
    with pytest.raises(ExerciseError, match="wrong way"):
        check_lm_loss(lambda logits, idx: F.cross_entropy(
            logits[:, 1:].reshape(-1, logits.shape[-1]), idx[:, :-1].reshape(-1)))
    with pytest.raises(ExerciseError, match="check_lm_loss"):  # summed, not averaged
        check_lm_loss(lambda logits, idx: F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1), reduction="sum"))
