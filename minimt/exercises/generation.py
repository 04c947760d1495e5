"""Checkers for 06_generation: top-p filtering, KV-cache bytes, greedy decoding that stops at EOS."""
from __future__ import annotations

from typing import Callable

import torch

from .core import ExerciseError, call, compare


def check_top_p_filter(fn: Callable) -> None:
    """fn(logits (B, V), p) -> logits with -inf outside the nucleus: the smallest set of most
    likely tokens whose probabilities sum to at least p (Holtzman et al. 2019)."""
    from ..sampling import top_p_filter
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    cases = [(probs.log(), 0.7), (probs.log(), 0.9), (probs.log(), 0.1), (probs.log(), 1.0),
             (torch.randn(3, 10, generator=g) * 2, 0.8), (torch.randn(2, 50, generator=g), 0.5)]
    for i, (logits, p) in enumerate(cases):
        got = call("check_top_p_filter", fn, logits.clone(), p)
        expected = top_p_filter(logits, p)
        name = f"check_top_p_filter, case {i + 1} of {len(cases)} (p={p})"
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            compare(name, got, expected)
        kept, kept_expected = got > float("-inf"), expected > float("-inf")
        if not torch.equal(kept, kept_expected):
            fewer = bool((kept <= kept_expected).all())
            hint = (" Hint: keep the token that makes the sum cross p too (remove a token only "
                    "when the tokens ranked above it already sum to >= p)" if fewer else "")
            raise ExerciseError(f"{name}: kept {kept.sum(-1).tolist()} tokens per row, expected "
                                f"{kept_expected.sum(-1).tolist()}.{hint}")
        compare(name + ", kept logits", got[kept], expected[kept])
    print(f"check_top_p_filter: all {len(cases)} cases pass")


def _kv_cache_bytes(config, bytes_per_value):
    return 2 * config.n_layer * config.n_embd * bytes_per_value


def check_kv_cache_bytes(fn: Callable) -> None:
    """fn(config, bytes_per_value) -> bytes of KV cache one token adds: a key and a value of
    n_embd numbers in each of the n_layer layers."""
    from ..config import GPTConfig
    cases = [(GPTConfig.from_preset(name), b) for name in ("gpt2-124m", "mt-nlg-530b") for b in (2, 4)]
    cases.append((GPTConfig(n_layer=3, n_embd=48, n_head=4), 1))
    for i, (config, b) in enumerate(cases):
        got = call("check_kv_cache_bytes", fn, config, b)
        expected = _kv_cache_bytes(config, b)
        if got == expected // 2:
            raise ExerciseError(f"check_kv_cache_bytes, case {i + 1}: got {got}, half of {expected}. "
                                "Hint: the cache holds keys AND values")
        compare(f"check_kv_cache_bytes, case {i + 1} of {len(cases)}", got, expected)
    print(f"check_kv_cache_bytes: all {len(cases)} cases pass")


def check_greedy_until_eos(fn: Callable) -> None:
    """fn(model, input_ids (1, T), max_new_tokens, eos_token_id) -> (1, T + n): greedy tokens,
    stopping right after the first EOS (kept in the output) or after max_new_tokens."""
    from ..config import GPTConfig
    from ..model import GPT
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, block_size=40, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # a random model whose greedy text does not just repeat one token
        model.transformer.wpe.weight.mul_(10.0)
        model.transformer.wte.weight.mul_(5.0)
    prompt = torch.tensor([[1, 5, 2]])
    free = model.generate(prompt, 20)[0, 3:].tolist()
    never = next(t for t in range(13) if t not in free[:6])
    cases = [(model, prompt, 20, free[4]), (model, prompt, 20, free[0]), (model, prompt, 6, never),
             (model, torch.tensor([[7, 7, 3, 9]]), 15, free[2])]
    for i, (m, ids, n, eos) in enumerate(cases):
        with torch.no_grad():
            got = call("check_greedy_until_eos", fn, m, ids, n, eos)
        expected = m.generate(ids, n, eos_token_id=eos)
        if isinstance(got, torch.Tensor) and got.shape[-1] == expected.shape[-1] - 1 \
                and torch.equal(got, expected[:, :-1]) and int(expected[0, -1]) == eos:
            raise ExerciseError(f"check_greedy_until_eos, case {i + 1}: the EOS token itself is "
                                "missing; append it, then stop")
        compare(f"check_greedy_until_eos, case {i + 1} of {len(cases)} (eos={eos})", got, expected)
    print(f"check_greedy_until_eos: all {len(cases)} cases pass")
