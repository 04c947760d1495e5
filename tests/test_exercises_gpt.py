# course: instructor only (model answers to the exercises; left out of student copies)
"""The 02_gpt exercise checkers accept independent correct answers and reject typical mistakes
with a hint (so a check can never be a no-op)."""
import math

import pytest
import torch.nn.functional as F

from minimt.exercises import ExerciseError, check_lm_loss, check_lr_schedule, check_param_count


def count_params(config):
    """A learner's correct closed form, written from the architecture, not from minimt's code."""
    C, b = config.n_embd, int(config.bias)
    hidden = config.mlp_ratio * C
    attention = C * 3 * C + 3 * C * b + C * C + C * b
    mlp = C * hidden + hidden * b + hidden * C + C * b
    layer_norms = 2 * (C + C * b)
    return (config.vocab_size * C + config.block_size * C
            + config.n_layer * (attention + mlp + layer_norms) + C + C * b)


def test_param_count_checker():
    check_param_count(count_params)
    with pytest.raises(ExerciseError, match="tied token embedding"):
        check_param_count(lambda c: count_params(c) + c.vocab_size * c.n_embd)
    with pytest.raises(ExerciseError, match="position embedding"):
        check_param_count(lambda c: count_params(c) - c.block_size * c.n_embd)
    with pytest.raises(ExerciseError, match="not implemented"):
        check_param_count(lambda c: (_ for _ in ()).throw(NotImplementedError))


def schedule(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + (learning_rate - min_lr) * 0.5 * (1 + math.cos(math.pi * ratio))


def test_lr_schedule_checker():
    check_lr_schedule(schedule)
    with pytest.raises(ExerciseError, match="check_lr_schedule"):  # warm-up from it/warmup
        check_lr_schedule(lambda it, lr, w, d, m: lr * it / w if it < w else schedule(it, lr, w, d, m))
    with pytest.raises(ExerciseError, match="check_lr_schedule"):  # decays to 0, not min_lr
        check_lr_schedule(lambda it, lr, w, d, m: schedule(it, lr, w, d, 0.0))


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
