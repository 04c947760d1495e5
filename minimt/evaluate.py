"""How MT-NLG was judged (Smith et al. 2022, arXiv 2201.11990, sections 5-6), in small functions.

Every task reduces to one question: how likely is a continuation given a context? `score_batch`
answers it for a batch (the sum of the continuation's token log-probabilities, and whether every
token is the model's argmax, LAMBADA's check); multiple-choice tasks take the choice with the
highest sum (acc) or sum per character (acc_norm), as lm-evaluation-harness does. Perplexity of a
fixed-length model slides a window over the text (Hugging Face's documented method); k-shot
prompts put k solved examples, drawn with a seed, before the question.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .generate import padding_mask_and_positions


@dataclass
class Score:
    """One continuation's score: the sum of its tokens' log-probabilities, whether every token is
    the argmax (greedy), and how many tokens it has."""
    logprob: float
    is_greedy: bool
    num_tokens: int


def per_token(score: Score) -> float:
    return score.logprob / score.num_tokens


def per_byte(score: Score, text: str) -> float:
    """The log-probability per UTF-8 byte of the continuation's text (lm-eval's acc_bytes)."""
    return score.logprob / len(text.encode("utf-8"))


def continuation_scores(logits: torch.Tensor, continuation: torch.Tensor) -> tuple[float, bool]:
    """logits (n, V) at the n positions that predict the continuation's n tokens (n,) -> (the sum
    of their log-probabilities, True when each token is its position's argmax)."""
    ### BEGIN SOLUTION
    logprobs = F.log_softmax(logits.float(), dim=-1)                          # (n, V)
    picked = logprobs.gather(-1, continuation[:, None])[:, 0]                 # (n,)
    is_greedy = bool((logits.argmax(dim=-1) == continuation).all())
    return picked.sum().item(), is_greedy
    ### END SOLUTION


@torch.no_grad()
def score_batch(model, contexts: list[list[int]], continuations: list[list[int]],
                padding: str = "right", pad_id: int = 0) -> list[Score]:
    """Score each (context, continuation) pair of token ids in one forward pass. Each row is
    context + continuation cut to its last block_size + 1 tokens, minus the last (lm-eval's rule);
    rows are padded on the right (the causal mask already hides what follows) or on the left
    (masked, with positions counted from each row's first token): both equal one pair at a time."""
    if padding not in ("left", "right"):
        raise ValueError(f"padding={padding!r}: choose 'left' or 'right'")
    block = model.config.block_size
    rows = []
    for context, continuation in zip(contexts, continuations, strict=True):
        if not context or not continuation:
            raise ValueError("every context and continuation needs at least one token (give an "
                             "empty context a prefix token, e.g. the end-of-text or newline id)")
        if len(continuation) > block:
            raise ValueError(f"a continuation of {len(continuation)} tokens does not fit "
                             f"block_size={block}")
        rows.append((context + continuation)[-(block + 1):][:-1])
    width = max(len(row) for row in rows)
    idx = torch.full((len(rows), width), pad_id, dtype=torch.long)           # (B, W)
    real = torch.zeros((len(rows), width), dtype=torch.long)                 # (B, W), 1 = a token
    starts = [width - len(row) if padding == "left" else 0 for row in rows]
    for b, (row, start) in enumerate(zip(rows, starts)):
        idx[b, start:start + len(row)] = torch.tensor(row)
        real[b, start:start + len(row)] = 1
    mask, positions = (padding_mask_and_positions(real, width) if padding == "left"
                       else (None, None))
    device = next(model.parameters()).device
    logits, _ = model(idx.to(device), mask=None if mask is None else mask.to(device),
                      position_ids=None if positions is None else positions.to(device))
    logits = model.gather_logits(logits)                                     # (B, W, V)
    scores = []
    for b, (row, start, continuation) in enumerate(zip(rows, starts, continuations)):
        end = start + len(row)                  # the last real position predicts the last token
        n = len(continuation)
        target = torch.tensor(continuation, device=device)                  # (n,)
        logprob, greedy = continuation_scores(logits[b, end - n:end], target)
        scores.append(Score(logprob, greedy, n))
    return scores


def score_requests(model, contexts, continuations, batch_size: int = 16,
                   padding: str = "right") -> list[Score]:
    """score_batch over batches of `batch_size` pairs, in the given order."""
    out = []
    for i in range(0, len(contexts), batch_size):
        out += score_batch(model, contexts[i:i + batch_size], continuations[i:i + batch_size],
                           padding)
    return out


# ---------------------------------------------------------------- perplexity


@torch.no_grad()
def sliding_window_nll(model, ids: list[int], stride: int, max_length: int | None = None,
                       prefix_id: int | None = None,
                       full_last_window: bool = False) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens scored) of `ids` cut into windows of max_length
    tokens (default block_size + 1: the model reads all but the last) that start every `stride`
    tokens; each window scores only the tokens no earlier window scored (Hugging Face's
    perplexity guide). A token with no context in its window (the first, and each window's first
    when stride = max_length) is not scored; `prefix_id` gives the first one a context.
    full_last_window: the last window ends at the text's end with max_length tokens, so its
    targets see a full context (lm-eval's rolling windows) instead of starting at k * stride."""
    max_length = max_length or model.config.block_size + 1
    if not 1 <= stride <= max_length or max_length > model.config.block_size + 1:
        raise ValueError(f"need 1 <= stride <= max_length <= block_size + 1, got stride={stride}, "
                         f"max_length={max_length}, block_size={model.config.block_size}")
    ids = ([prefix_id] if prefix_id is not None else []) + list(ids)
    device = next(model.parameters()).device
    nll, count, scored_until = 0.0, 0, 1   # ids[0] is never a target: nothing precedes it
    ### BEGIN SOLUTION
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + max_length, len(ids))
        if full_last_window and end == len(ids):
            begin = max(0, end - max_length)
        window = torch.tensor([ids[begin:end]], device=device)               # (1, L)
        logits = model.gather_logits(model(window[:, :-1])[0])[0]             # (L-1, V)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        picked = logprobs.gather(-1, window[0, 1:, None])[:, 0]                # (L-1,)
        new = picked[max(0, scored_until - begin - 1):]  # the targets no window scored yet
        nll -= new.sum().item()
        count += len(new)
        scored_until = end
        if end == len(ids):
            break
    ### END SOLUTION
    return nll, count


def perplexity(model, ids: list[int], stride: int | None = None) -> float:
    """exp(mean negative log-likelihood per token) with a sliding window (default stride:
    block_size, windows that share only the token one predicts and the next reads)."""
    nll, count = sliding_window_nll(model, ids, stride or model.config.block_size)
    return math.exp(nll / count)


def word_level(nll: float, num_tokens: int, text: str) -> dict:
    """Megatron's WikiText report: perplexity per token and per word (whitespace-split, as
    lm-eval counts them), and the tokens-per-word ratio that converts one into the other."""
    words = len(re.split(r"\s+", text))
    return {"token_perplexity": math.exp(nll / num_tokens),
            "word_perplexity": math.exp(nll / words), "tokens_per_word": num_tokens / words}


# ---------------------------------------------------------------- LAMBADA


def lambada_split(passage: str) -> tuple[str, str]:
    """(context, " last word"): LAMBADA predicts a passage's last word from the rest."""
    context, _, last = passage.rstrip().rpartition(" ")
    if not context:
        raise ValueError(f"a LAMBADA passage needs at least two words: {passage[:40]!r}")
    return context, " " + last


def lambada_accuracy(model, tokenizer, passages: list[str], batch_size: int = 16) -> dict:
    """Megatron's former tasks/zeroshot_gpt: strict = every token of the last word is the argmax;
    non-strict = only its last token must be (given all the others)."""
    pairs = [lambada_split(p) for p in passages]
    contexts = [tokenizer.encode(c) for c, _ in pairs]
    targets = [tokenizer.encode(t) for _, t in pairs]
    strict = score_requests(model, contexts, targets, batch_size)
    loose = score_requests(model, [c + t[:-1] for c, t in zip(contexts, targets)],
                           [t[-1:] for t in targets], batch_size)
    n = len(passages)
    return {"strict": sum(s.is_greedy for s in strict) / n,
            "non_strict": sum(s.is_greedy for s in loose) / n,
            "perplexity": math.exp(-sum(s.logprob for s in strict) / n)}


# ---------------------------------------------------------------- k-shot multiple choice

FEWSHOT_DELIMITER, TARGET_DELIMITER = "\n\n", " "  # lm-eval's defaults


def fewshot_indices(pool_size: int, k: int, exclude: int | None, seed: int) -> list[int]:
    """k distinct indices into a pool of solved examples, drawn with `seed`, never `exclude`
    (the question itself, when the pool is the evaluated split)."""
    available = pool_size - (exclude is not None and 0 <= exclude < pool_size)
    if k > available:
        raise ValueError(f"k={k} shots but only {available} examples to draw from")
    ### BEGIN SOLUTION
    candidates = [i for i in range(pool_size) if i != exclude]
    return random.Random(seed).sample(candidates, k)
    ### END SOLUTION


def fewshot_prompt(shots: list[dict], doc: dict) -> str:
    """lm-eval's layout: each solved example as context + " " + its answer, separated by blank
    lines, then the question's context (the model continues with " " + a choice)."""
    solved = [s["context"] + TARGET_DELIMITER + s["choices"][s["answer"]] for s in shots]
    return "".join(x + FEWSHOT_DELIMITER for x in solved) + doc["context"]


def multiple_choice_accuracy(model, tokenizer, docs: list[dict], k: int = 0, pool=None,
                             seed: int = 1234, batch_size: int = 16,
                             shots_for=None) -> dict:
    """acc (highest summed log-probability) and acc_norm (highest per character of the choice)
    of docs {"context", "choices", "answer"} with k shots from `pool` (default: the docs, never
    the question itself). `shots_for(i)` may choose each question's shots instead."""
    pool = docs if pool is None else pool
    contexts, continuations, owners = [], [], []
    for i, doc in enumerate(docs):
        if shots_for is not None:
            shots = shots_for(i)
        else:
            exclude = i if pool is docs else None
            shots = [pool[j] for j in fewshot_indices(len(pool), k, exclude, seed + i)]
        prompt = tokenizer.encode(fewshot_prompt(shots, doc))
        for choice in doc["choices"]:
            contexts.append(prompt)
            continuations.append(tokenizer.encode(TARGET_DELIMITER + choice))
            owners.append(i)
    scores = score_requests(model, contexts, continuations, batch_size)
    acc = acc_norm = 0
    for i, doc in enumerate(docs):
        mine = [s.logprob for s, o in zip(scores, owners) if o == i]
        norm = [lp / len(c) for lp, c in zip(mine, doc["choices"])]
        acc += max(range(len(mine)), key=mine.__getitem__) == doc["answer"]
        acc_norm += max(range(len(norm)), key=norm.__getitem__) == doc["answer"]
    return {"acc": acc / len(docs), "acc_norm": acc_norm / len(docs)}
