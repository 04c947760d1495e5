# course: instructor only (model answers to the exercises; left out of student copies)
"""Notebook 06's exercise checkers accept correct answers written independently of minimt's code
and reject the usual mistakes with a message that says what is wrong."""
import pytest
import torch

from minimt.exercises import (ExerciseError, check_greedy_until_eos, check_kv_cache_bytes,
                              check_min_p_filter)


def min_p(logits, p, strict=False, absolute=False):
    """A learner's min-p with a loop over rows (strict/absolute: the usual mistakes)."""
    out = logits.clone()
    for row in range(logits.shape[0]):
        probs = logits[row].softmax(-1)
        threshold = p if absolute else p * float(probs.max())
        drop = probs <= threshold if strict else probs < threshold
        out[row, drop] = float("-inf")
    return out


def test_check_min_p_filter(capsys):
    check_min_p_filter(min_p)
    assert "all 5 cases pass" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="exactly at the threshold stays"):
        check_min_p_filter(lambda logits, p: min_p(logits, p, strict=True))
    with pytest.raises(ExerciseError, match="the threshold is relative"):
        check_min_p_filter(lambda logits, p: min_p(logits, p, absolute=True))
    with pytest.raises(ExerciseError, match="kept logits"):
        check_min_p_filter(lambda logits, p: min_p(logits, p).log_softmax(-1))
    with pytest.raises(ExerciseError, match="not implemented yet"):
        check_min_p_filter(lambda logits, p: (_ for _ in ()).throw(NotImplementedError))


def test_check_kv_cache_bytes(capsys):
    check_kv_cache_bytes(lambda config, b: 2 * config.n_layer * config.n_embd * b)
    assert "all 5 cases pass" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="keys AND values"):
        check_kv_cache_bytes(lambda config, b: config.n_layer * config.n_embd * b)
    with pytest.raises(ExerciseError, match="got"):  # per head instead of all heads
        check_kv_cache_bytes(lambda config, b: 2 * config.n_layer * config.head_dim * b)


def greedy(model, ids, n, eos, stop=True, keep_eos=True):
    for _ in range(n):
        with torch.no_grad():
            next_token = model(ids)[0][:, -1].argmax(-1, keepdim=True)  # (1, 1)
        if stop and int(next_token) == eos:
            return torch.cat((ids, next_token), 1) if keep_eos else ids
        ids = torch.cat((ids, next_token), 1)
    return ids


def test_check_greedy_until_eos(capsys):
    check_greedy_until_eos(greedy)
    assert "all 4 cases pass" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match=r"shape \(1, 23\)"):
        check_greedy_until_eos(lambda *a: greedy(*a, stop=False))
    with pytest.raises(ExerciseError, match="the EOS token itself is missing"):
        check_greedy_until_eos(lambda *a: greedy(*a, keep_eos=False))
