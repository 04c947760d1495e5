# course: instructor only (model answers to the exercises; left out of student copies)
"""Notebook 06's exercise checkers accept correct answers written independently of minimt's code
and reject the usual mistakes with a message that says what is wrong."""
import pytest
import torch

from minimt.exercises import (ExerciseError, check_greedy_until_eos, check_kv_cache_bytes,
                              check_top_p_filter)


def nucleus(logits, p):
    """A learner's correct top-p, written with a loop over rows instead of a scatter."""
    out = logits.clone()
    for row in range(logits.shape[0]):
        probs = logits[row].softmax(-1)
        order = probs.argsort(descending=True)
        total = 0.0
        for rank, index in enumerate(order.tolist()):
            if rank > 0 and total >= p:
                out[row, index] = float("-inf")
            total += float(probs[index])
    return out


def nucleus_one_short(logits, p):
    """The off-by-one: drops the token that makes the sum cross p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    remove = sorted_logits.softmax(-1).cumsum(-1) > p
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def test_check_top_p_filter(capsys):
    check_top_p_filter(nucleus)
    assert "all 7 cases pass" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="keep the token that makes the sum cross p"):
        check_top_p_filter(nucleus_one_short)
    with pytest.raises(ExerciseError, match="not implemented yet"):
        check_top_p_filter(lambda logits, p: (_ for _ in ()).throw(NotImplementedError))


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
