"""Tasks of 10_evaluation: a continuation's log-likelihood and greedy check, the sliding-window
perplexity, the k-shot draw. Oracles: torch's cross entropy, transformers' GPT-2 run as Hugging
Face's perplexity guide does, and properties every honest draw has."""
from __future__ import annotations

import importlib
import math
import random

import torch
import torch.nn.functional as F

from .core import ExerciseError, task


def _target(name: str):
    """The learner's function, imported at call time (so an edit is picked up)."""
    return getattr(importlib.import_module("minimt.evaluate"), name)


def check_continuation_scores() -> None:
    """continuation_scores(logits (n, V), continuation (n,)) -> (sum of log-probs, greedy?)."""
    continuation_scores = _target("continuation_scores")
    g = torch.Generator().manual_seed(0)
    for i, (n, vocab, greedy) in enumerate([(1, 5, True), (3, 7, False), (4, 11, True),
                                            (5, 9, False), (2, 3, False)]):
        logits = torch.randn(n, vocab, generator=g) * 3                         # (n, V)
        best = logits.max(dim=-1).indices
        continuation = best.clone()
        if not greedy:  # one token that is not its position's most likely one
            continuation[n // 2] = (best[n // 2] + 1) % vocab
        expected = -F.cross_entropy(logits, continuation, reduction="sum").item()
        name = f"task 10.1, case {i + 1} (n={n} tokens, V={vocab}, greedy={greedy})"
        got = continuation_scores(logits, continuation)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise ExerciseError(f"{name}: return a tuple (sum of log-probabilities, is_greedy), "
                                f"got {got!r}")
        logprob, is_greedy = got
        if not math.isclose(float(logprob), expected, abs_tol=1e-4):
            hint = ("that is the mean over tokens: lm-eval's loglikelihood is the sum"
                    if math.isclose(float(logprob) * n, expected, abs_tol=1e-4) else
                    "take log_softmax over the vocabulary, then the continuation token's entry "
                    "at each position, and add them up")
            raise ExerciseError(f"{name}: log-likelihood {float(logprob):.5f}, expected "
                                f"{expected:.5f} (minus the summed cross entropy). Hint: {hint}")
        if bool(is_greedy) != greedy:
            raise ExerciseError(f"{name}: is_greedy={is_greedy}, expected {greedy}. Hint: greedy "
                                f"means every token is its position's argmax (all, not any)")
    print("task 10.1: continuation_scores passes all 5 cases")


def _hf_guide(hf, ids, max_length, stride):
    """Hugging Face's perplexity guide (labels -100 outside each window's new targets), with
    each window's mean loss weighted by the targets it really averages."""
    encodings = torch.tensor([ids])
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, encodings.size(1), stride):
        end = min(begin + max_length, encodings.size(1))
        input_ids = encodings[:, begin:end]
        labels = input_ids.clone()
        labels[:, :-(end - prev_end)] = -100
        with torch.no_grad():
            loss = hf(input_ids, labels=labels).loss.item()
        valid = (labels[:, 1:] != -100).sum().item()
        nll_sum, n_tokens, prev_end = nll_sum + loss * valid, n_tokens + valid, end
        if end == encodings.size(1):
            break
    return nll_sum, n_tokens


def check_sliding_window_nll() -> None:
    """sliding_window_nll equals the perplexity guide run with transformers on the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ..model import GPT

    sliding_window_nll = _target("sliding_window_nll")
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=30, n_positions=12, n_embd=16, n_layer=1,
                                    n_head=2, bos_token_id=1, eos_token_id=2)).eval()
    model = GPT.from_hf_gpt2(hf).eval()
    ids = torch.randint(30, (50,), generator=torch.Generator().manual_seed(3)).tolist()
    for i, (length, stride, max_length) in enumerate([(50, 4, 12), (50, 12, 12), (50, 5, 8),
                                                      (9, 3, 12), (31, 1, 6)]):
        expected = _hf_guide(hf, ids[:length], max_length, stride)
        got = sliding_window_nll(model, ids[:length], stride, max_length=max_length)
        name = (f"task 10.2, case {i + 1} ({length} tokens, stride={stride}, "
                f"max_length={max_length})")
        if got[1] != expected[1]:
            hint = ("each token once: a window scores only the targets after the previous "
                    "window's end" if got[1] > expected[1] else
                    "a window of L tokens scores up to L - 1 targets: window[1:], from the first "
                    "one no earlier window scored")
            raise ExerciseError(f"{name}: scored {got[1]} tokens, the guide scores "
                                f"{expected[1]}. Hint: {hint}")
        if not math.isclose(got[0], expected[0], rel_tol=1e-4):
            raise ExerciseError(f"{name}: summed NLL {got[0]:.4f}, the guide's {expected[0]:.4f}"
                                f". Hint: add -log p(target) of each newly scored target; the "
                                f"target of input position j is window[j + 1]")
    print("task 10.2: sliding_window_nll equals transformers in all 5 cases")


def check_fewshot_indices() -> None:
    """fewshot_indices: k distinct in-range indices, never `exclude`, the same for one seed
    whatever the global random state, different across seeds."""
    fewshot_indices = _target("fewshot_indices")
    for pool, k, exclude in [(10, 3, 4), (6, 5, 0), (8, 8, None), (20, 1, 19), (5, 0, 2)]:
        name = f"task 10.3 (pool_size={pool}, k={k}, exclude={exclude})"
        draws = []
        for seed in range(12):
            random.seed(100 + seed)  # a seeded draw must not depend on the global state
            first = fewshot_indices(pool, k, exclude, seed)
            random.seed(7)
            if fewshot_indices(pool, k, exclude, seed) != first:
                raise ExerciseError(f"{name}, seed {seed}: two calls gave {first} and another "
                                    f"draw. Hint: draw with random.Random(seed), not the "
                                    f"module-level random")
            draws.append(list(first))
        for got in draws:
            if len(got) != k or len(set(got)) != k or not all(0 <= j < pool for j in got):
                raise ExerciseError(f"{name}: got {got}, expected {k} distinct indices in "
                                    f"0..{pool - 1}. Hint: sample without replacement")
            if exclude in got:
                raise ExerciseError(f"{name}: got {got}, which holds the question {exclude} "
                                    f"itself: its answer would leak into its own prompt")
        others = pool - (exclude is not None)
        if 0 < k < others and len({tuple(d) for d in draws}) == 1:
            raise ExerciseError(f"{name}: every seed gave {draws[0]}. Hint: draw at random "
                                f"with the seed, not the first k")
    print("task 10.3: fewshot_indices passes all 5 cases")


TASKS = [
    task("10.1", 2, "write continuation_scores: a continuation's summed log-probability and "
         "greedy check", "minimt.evaluate:continuation_scores", "notebook 10, section 1",
         check_continuation_scores),
    task("10.2", 3, "write the window loop of sliding_window_nll",
         "minimt.evaluate:sliding_window_nll", "notebook 10, section 2",
         check_sliding_window_nll),
    task("10.3", 2, "write fewshot_indices: k seeded shots, never the question",
         "minimt.evaluate:fewshot_indices", "notebook 10, section 3", check_fewshot_indices),
]
