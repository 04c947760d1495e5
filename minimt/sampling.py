"""Logits filters for sampling, as pure functions (testable, reusable in exercises).

Applied in transformers' order by `process_logits`: repetition penalty, temperature, top-k, top-p.
A filtered-out token gets the logit -inf, so softmax gives it probability exactly 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def apply_repetition_penalty(logits, input_ids, penalty, attention_mask=None):
    """CTRL's penalty (Keskar et al. 2019, arXiv 1909.05858) on tokens already in `input_ids`:
    a positive logit is divided by `penalty`, a negative one multiplied (as transformers does).
    Positions where `attention_mask` (B, T) is 0 (left padding) are not counted as seen."""
    if penalty == 1.0:
        return logits
    if attention_mask is not None:  # padding points at an extra column, dropped below
        input_ids = input_ids.masked_fill(attention_mask == 0, logits.shape[-1])
    padded = F.pad(logits, (0, 1))                                            # (B, V + 1)
    seen = padded.gather(-1, input_ids)                                       # (B, T)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return padded.scatter(-1, input_ids, seen)[..., :-1]                      # (B, V)


def apply_temperature(logits, temperature):
    """softmax(z / tau): tau < 1 sharpens the distribution, tau > 1 flattens it."""
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits, k):
    """Keep the k largest logits of each row (ties with the k-th are kept); others become -inf."""
    ### BEGIN SOLUTION
    if not k:
        return logits
    k = min(k, logits.shape[-1])
    kth_largest = logits.topk(k, dim=-1).values[..., -1:]                     # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))
    ### END SOLUTION


def top_p_filter(logits, p):
    """Nucleus filter (Holtzman et al. 2019, arXiv 1904.09751): keep the smallest set of most
    likely tokens whose probabilities sum to at least p; the most likely token is always kept."""
    ### BEGIN SOLUTION
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)               # (..., V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs   # probability of the tokens ranked above each
    remove_sorted = mass_before >= p             # the set already reached p without this token
    remove = remove_sorted.scatter(-1, order, remove_sorted)                  # back to vocab order
    return logits.masked_fill(remove, float("-inf"))
    ### END SOLUTION


def process_logits(logits, input_ids, repetition_penalty=1.0, temperature=1.0, top_k=None,
                   top_p=None, do_sample=True, attention_mask=None):
    """transformers' order: repetition penalty, then (when sampling) temperature, top-k, top-p."""
    logits = apply_repetition_penalty(logits, input_ids, repetition_penalty, attention_mask)
    if do_sample:
        logits = apply_temperature(logits, temperature)
        if top_k:                            # filters only when asked: plain sampling runs
            logits = top_k_filter(logits, top_k)      # before notebook 06 teaches them
        if top_p is not None and top_p < 1.0:
            logits = top_p_filter(logits, top_p)
    return logits
