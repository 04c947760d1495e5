"""Checkers for 06_generation: min-p filtering, KV-cache bytes, greedy decoding that stops at EOS,
and the tasks top-k, top-p (oracles: transformers' MinPLogitsWarper, TopKLogitsWarper and
TopPLogitsWarper), the KV cache append and the one-token decoding step (oracle: the same model run
without a cache), and beam search (oracle: transformers' generate)."""
from __future__ import annotations

from typing import Callable

import torch

from .core import ExerciseError, call, compare, learner, needs_tasks, shape_first, task


def transformers_top_k(logits, k):
    """Oracle: transformers' TopKLogitsWarper (k None or 0: no filtering)."""
    from transformers.generation.logits_process import TopKLogitsWarper
    return logits if not k else TopKLogitsWarper(k)(None, logits.clone())


def transformers_top_p(logits, p):
    """Oracle: transformers' TopPLogitsWarper."""
    from transformers.generation.logits_process import TopPLogitsWarper
    return TopPLogitsWarper(p)(None, logits.clone())


def _top_p_cases():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    exact = torch.tensor([[0.125, 0.5, 0.125, 0.25]])  # sums hit p = 0.75 exactly (binary fractions)
    return [(probs.log(), 0.7), (probs.log(), 0.9), (probs.log(), 0.1), (probs.log(), 1.0),
            (exact.log(), 0.75),
            (torch.randn(3, 10, generator=g) * 2, 0.8), (torch.randn(2, 50, generator=g), 0.5)]


def check_min_p_filter(fn: Callable) -> None:
    """fn(logits (B, V), min_p) -> logits with -inf where a token's probability is below min_p times
    the row's largest (min-p sampling, Nguyen et al. 2024); oracle: transformers' MinPLogitsWarper."""
    from transformers.generation.logits_process import MinPLogitsWarper
    g = torch.Generator().manual_seed(0)
    exact = torch.tensor([[0.5, 0.25, 0.125, 0.125]])   # binary fractions: 0.25 * 0.5 is exact
    cases = [(torch.randn(3, 10, generator=g) * 2, 0.1), (exact.log(), 0.25), (exact.log(), 0.6),
             (exact.log() + 3.0, 0.5), (torch.randn(2, 50, generator=g), 0.3)]
    for i, (logits, min_p) in enumerate(cases):
        got = call("check_min_p_filter", fn, logits.clone(), min_p)
        expected = MinPLogitsWarper(min_p)(None, logits.clone())
        name = f"check_min_p_filter, case {i + 1} of {len(cases)} (logits {tuple(logits.shape)}, " \
               f"min_p={min_p})"
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            compare(name, got, expected)
        kept, kept_expected = got > float("-inf"), expected > float("-inf")
        if not torch.equal(kept, kept_expected):
            probs = logits.softmax(-1)
            hint = ("a token exactly at the threshold stays (keep p >= min_p * p_max)"
                    if torch.equal(kept, probs > min_p * probs.max(-1, keepdim=True).values) else
                    "the threshold is relative: min_p times the largest probability of the row, "
                    "not min_p itself" if torch.equal(kept, probs >= min_p) else
                    "compare probabilities (softmax of the logits), not the logits"
                    if torch.equal(kept, logits >= min_p * logits.max(-1, keepdim=True).values)
                    else "keep a token when its probability is >= min_p times the row's largest")
            raise ExerciseError(f"{name}: kept {kept.sum(-1).tolist()} tokens per row, expected "
                                f"{kept_expected.sum(-1).tolist()}. Hint: {hint}")
        compare(name + ", kept logits (unchanged)", got[kept], expected[kept])
    print(f"check_min_p_filter: all {len(cases)} cases pass (equal to transformers' "
          f"MinPLogitsWarper)")


def _top_p(fn: Callable, exercise: str) -> None:
    cases = _top_p_cases()
    for i, (logits, p) in enumerate(cases):
        got = fn(logits.clone(), p)
        expected = transformers_top_p(logits, p)
        name = f"{exercise}, case {i + 1} of {len(cases)} (logits {tuple(logits.shape)}, p={p})"
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
    print(f"{exercise}: all {len(cases)} cases pass (equal to transformers' TopPLogitsWarper)")


class _RecordingCache:
    """Stands in for a KV cache and measures what one token adds to it."""

    def __init__(self):
        self.numel = 0

    def __len__(self):
        return 0

    def append(self, k, v):                                   # (B, H, T_new, D) each
        self.numel += k[0, :, -1].numel() + v[0, :, -1].numel()
        return k, v


def _measured_kv_bytes(config, bytes_per_value):
    """Oracle: run one attention layer of `config` on the meta device (shapes only) with a cache
    that counts what a token stores, times the number of layers."""
    from ..attention import MultiHeadAttention
    with torch.device("meta"):
        layer = MultiHeadAttention(config.n_embd, config.n_head, bias=config.bias)
        cache = _RecordingCache()
        layer(torch.empty(1, 1, config.n_embd), kv_cache=cache)
    return config.n_layer * cache.numel * bytes_per_value


def check_kv_cache_bytes(fn: Callable) -> None:
    """fn(config, bytes_per_value) -> bytes of KV cache one token adds: a key and a value of
    n_embd numbers in each of the n_layer layers."""
    from ..config import GPTConfig
    cases = [(GPTConfig.from_preset(name), b) for name in ("gpt2-124m", "mt-nlg-530b") for b in (2, 4)]
    cases.append((GPTConfig(n_layer=3, n_embd=48, n_head=4), 1))
    for i, (config, b) in enumerate(cases):
        got = call("check_kv_cache_bytes", fn, config, b)
        expected = _measured_kv_bytes(config, b)
        if got == expected // 2:
            raise ExerciseError(f"check_kv_cache_bytes, case {i + 1}: got {got}, half of {expected}. "
                                "Hint: the cache holds keys AND values")
        compare(f"check_kv_cache_bytes, case {i + 1} of {len(cases)}", got, expected)
    print(f"check_kv_cache_bytes: all {len(cases)} cases pass")


@needs_tasks
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


# ---------------------------------------------------------------------------- tasks in the package

def _check_top_k_task() -> None:
    """minimt.sampling.top_k_filter against transformers' TopKLogitsWarper, ties and k >= V included."""
    top_k_filter = learner("minimt.sampling:top_k_filter")
    g = torch.Generator().manual_seed(0)
    ties = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0, -1.0]])
    cases = [(torch.randn(2, 10, generator=g), 3), (ties, 2), (torch.randn(1, 5, generator=g), 5),
             (torch.randn(3, 7, generator=g), 20), (torch.randn(2, 6, generator=g), None),
             (torch.randn(4, 50, generator=g) * 3, 1)]
    for i, (logits, k) in enumerate(cases):
        name = f"task 06.3, case {i + 1} of {len(cases)} (logits {tuple(logits.shape)}, k={k})"
        got = top_k_filter(logits.clone(), k)
        expected = transformers_top_k(logits, k)
        shape_first(name, got, tuple(logits.shape), "return every logit, the filtered ones as -inf")
        kept, kept_expected = got > float("-inf"), expected > float("-inf")
        if not torch.equal(kept, kept_expected):
            hint = ("a logit tied with the k-th largest is kept too (compare with the k-th value, "
                    "logits < kth -> -inf)" if i == 1 else
                    "k larger than the vocabulary keeps everything (k = min(k, V))" if k and k > logits.shape[-1]
                    else "k=None or 0 means no filtering" if not k else
                    "keep the k largest logits of each row (topk along the last dimension)")
            raise ExerciseError(f"{name}: kept {kept.sum(-1).tolist()} tokens per row, transformers' "
                                f"TopKLogitsWarper keeps {kept_expected.sum(-1).tolist()}. Hint: {hint}")
        compare(name + ", kept logits", got[kept], expected[kept])
    print(f"task 06.3: top_k_filter equals transformers' TopKLogitsWarper on {len(cases)} cases")


def _check_top_p_task() -> None:
    """minimt.sampling.top_p_filter against transformers' TopPLogitsWarper."""
    _top_p(learner("minimt.sampling:top_p_filter"), "task 06.4")


def _attention_layer():
    """A small causal attention layer (the package's, not a task) in float64."""
    from ..attention import MultiHeadAttention
    torch.manual_seed(0)
    return MultiHeadAttention(16, 2).double().eval()


def _check_kv_append_task() -> None:
    """KVCache.append: fed one token (or a chunk) at a time, the cache returns every key and value
    so far, and attention with it equals attention over the whole sequence without a cache."""
    cache_class = learner("minimt.attention:KVCache")
    layer = _attention_layer()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 16, dtype=torch.float64, generator=g)               # (B, T, C)
    k_all = torch.randn(2, 2, 6, 8, dtype=torch.float64, generator=g)         # (B, H, T, D)
    v_all = torch.randn(2, 2, 6, 8, dtype=torch.float64, generator=g)
    cache = cache_class()
    for t, (lo, hi) in enumerate([(0, 3), (3, 4), (4, 5), (5, 6)]):
        name = f"task 06.1, append {t + 1} (tokens {lo}..{hi - 1} of k, v (2, 2, 6, 8))"
        got = cache.append(k_all[:, :, lo:hi], v_all[:, :, lo:hi])
        if not isinstance(got, tuple) or len(got) != 2:
            raise ExerciseError(f"{name}: return (all keys, all values) so far, got {type(got).__name__}")
        for what, tensor, full in (("keys", got[0], k_all), ("values", got[1], v_all)):
            shape_first(f"{name}: {what}", tensor, (2, 2, hi, 8), "concatenate along the sequence "
                        "dimension, dim=-2 of (B, H, T, D), keeping every earlier token")
            compare(f"{name}: {what}", tensor, full[:, :, :hi])
        if len(cache) != hi:
            raise ExerciseError(f"{name}: len(cache) is {len(cache)}, expected {hi}: store the "
                                f"concatenation in self.k and self.v")
    cache = cache_class()
    with torch.no_grad():
        full = layer(x)                                                        # (B, T, C)
        steps = [layer(x[:, :3], kv_cache=cache)] + [layer(x[:, t:t + 1], kv_cache=cache)
                                                     for t in range(3, 6)]
    compare("task 06.1, attention with the cache (a 3-token prompt, then 3 tokens one at a time) "
            "against attention over the whole sequence", torch.cat(steps, dim=1), full, atol=1e-10)
    print("task 06.1: KVCache.append keeps every key and value; cached attention equals uncached")


def _check_decoder_step_task() -> None:
    """Decoder.step: after each new token, the cached logits equal the serial model's logits on the
    whole sequence without a cache; with left padding, each row equals that row run alone."""
    from ..config import GPTConfig
    from ..generate import left_pad
    from ..model import GPT
    decoder_class = learner("minimt.generate:Decoder")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, block_size=24, n_layer=2, n_head=2, n_embd=16)).eval()
    prompts = [[1, 5, 2, 7], [3, 9]]
    input_ids, attention_mask = left_pad(prompts, pad_token_id=0)             # (2, 4)
    new_tokens = torch.tensor([[4, 6], [11, 0], [2, 2]])                      # (steps, B)
    for use_mask in (False, True):
        decoder = decoder_class(model, input_ids, attention_mask if use_mask else None)
        rows = [list(p) for p in prompts] if use_mask else [input_ids[b].tolist() for b in range(2)]
        with torch.no_grad():
            decoder.prefill()
            for step, tokens in enumerate(new_tokens):
                got = decoder.step(tokens)
                name = (f"task 06.2, {'left-padded prompts' if use_mask else 'unpadded batch'} "
                        f"{tuple(input_ids.shape)}, step {step + 1}")
                for b in range(2):
                    rows[b].append(int(tokens[b]))
                shape_first(f"{name}: logits", got, (2, 13), "one row of next-token logits per sequence")
                shape_first(f"{name}: decoder.ids", decoder.ids, (2, 4 + step + 1),
                            "append next_tokens as a new column of self.ids")
                for b in range(2):
                    expected = model(torch.tensor([rows[b]]))[0][0, -1]             # (V,) no cache
                    if not torch.allclose(got[b], expected, atol=1e-5):
                        hint = ("with the cache, feed only the new token (the cache holds the rest)"
                                if decoder.caches and len(decoder.caches[0]) > 4 + step + 1 else
                                "extend attention_mask by a column of ones for the new token"
                                if use_mask else "return the logits that follow the new tokens")
                        raise ExerciseError(f"{name}, row {b}: logits differ from the model run on the "
                                            f"whole sequence {rows[b]} without a cache (largest error "
                                            f"{(got[b] - expected).abs().max().item():.3g}). Hint: {hint}")
    print("task 06.2: cached decoding steps equal uncached logits, with and without left padding")


def _random_gpt2_pair():
    """A small random transformers GPT-2 (nothing downloaded) and minimt's GPT with its weights."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from ..model import GPT
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    with torch.no_grad():  # spread the next-token distribution so that ties cannot happen
        hf.transformer.wte.weight.mul_(20.0)
    return hf, GPT.from_hf_gpt2(hf).eval()


def _check_beam_task() -> None:
    """The decoding loop of beam_search against transformers' beam search (GPT2LMHeadModel.generate
    with num_beams) on the same weights: sequences and their length-normalised scores."""
    from ..generate import left_pad
    learner("minimt.generate:beam_search")  # the model's generate calls it
    hf, ours = _random_gpt2_pair()
    ids, mask = left_pad([[5, 6, 7, 8, 9], [12, 13]], pad_token_id=0)
    with torch.no_grad():
        first = hf.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False,
                            pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    greedy = first.sequences[:, ids.shape[1]:]                                  # (2, 3)
    eos, likely_eos = int(greedy[0, -1]), int(greedy[1, 0])  # some beams finish early, some at once
    runner_up = int(first.scores[0][0].topk(2).indices[1])  # 2 beams finish early, a third goes on
    cases = [dict(num_beams=3, num_return_sequences=1, length_penalty=1.0, early_stopping=False),
             dict(num_beams=4, num_return_sequences=3, length_penalty=1.0, early_stopping=False,
                  eos_token_id=eos),
             dict(num_beams=4, num_return_sequences=2, length_penalty=0.5, early_stopping=True,
                  eos_token_id=eos),
             dict(num_beams=3, num_return_sequences=2, length_penalty=1.0, early_stopping=True,
                  eos_token_id=likely_eos),
             dict(num_beams=2, num_return_sequences=2, length_penalty=2.0, early_stopping=True,
                  eos_token_id=runner_up)]
    for i, settings in enumerate(cases):
        name = f"task 06.5, case {i + 1} of {len(cases)} ({settings}, prompts of 5 and 2 tokens)"
        with torch.no_grad():
            expected = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
                                   pad_token_id=3, output_scores=True, return_dict_in_generate=True,
                                   **settings)
            got = ours.generate(ids, 8, attention_mask=mask, pad_token_id=3,
                                return_dict_in_generate=True, **settings)
        shape_first(f"{name}: sequences", got.sequences, tuple(expected.sequences.shape),
                    "num_return_sequences rows per prompt, the prompt then the new tokens")
        if not torch.equal(got.sequences, expected.sequences):
            with torch.no_grad():
                greedy = ours.generate(ids, 8, attention_mask=mask, pad_token_id=3,
                                       eos_token_id=settings.get("eos_token_id"))
                heuristic = hf.generate(ids, attention_mask=mask, do_sample=False,
                                        max_new_tokens=8, pad_token_id=3,
                                        **{**settings, "early_stopping": False})
            hint = ("these are early_stopping=False's sequences: with early_stopping=True a prompt "
                    "is done as soon as num_beams hypotheses are finished, even when a running "
                    "beam could still beat them"
                    if settings["early_stopping"] is True and torch.equal(got.sequences, heuristic)
                    else "this is greedy decoding: keep the num_beams best partial sequences by "
                    "their summed log-probability, ranking all beams' continuations together"
                    if torch.equal(got.sequences[::settings["num_return_sequences"]], greedy) else
                    "rank the 2 * num_beams best continuations of all beams together; among "
                    "the first num_beams, one that ends in EOS is finished, the others go on")
            raise ExerciseError(f"{name}: sequences differ from transformers' beam search:\n"
                                f"got      {got.sequences[:, ids.shape[1]:].tolist()}\nexpected "
                                f"{expected.sequences[:, ids.shape[1]:].tolist()}\nHint: {hint}")
        compare(f"{name}: sequences_scores (sum of log-probabilities / new_len ** length_penalty)",
                got.sequences_scores, expected.sequences_scores, atol=1e-5)
        if len(got.scores) != len(expected.scores):
            raise ExerciseError(f"{name}: decoding ran {len(got.scores)} steps, transformers' "
                                f"{len(expected.scores)}. Hint: a prompt is done when num_beams "
                                f"hypotheses are finished and early_stopping=True, or no running "
                                f"beam can beat the worst of them; stop when every prompt is done")
    print(f"task 06.5: beam search equals transformers' on {len(cases)} cases (EOS, length "
          f"penalty, early stopping)")


TASKS = [
    task("06.1", 1, "write KVCache.append", "minimt.attention:KVCache.append",
         "notebook 06, section 3", _check_kv_append_task),
    task("06.2", 2, "write Decoder.step (one new token through the KV caches)",
         "minimt.generate:Decoder.step", "notebook 06, section 3", _check_decoder_step_task),
    task("06.3", 1, "write top_k_filter", "minimt.sampling:top_k_filter", "notebook 06, section 7",
         _check_top_k_task),
    task("06.4", 2, "write top_p_filter (the nucleus: smallest set reaching p)",
         "minimt.sampling:top_p_filter", "notebook 06, section 8", _check_top_p_task),
    task("06.5", 3, "write the decoding loop of beam_search (each step ranks the beams' 2k best "
         "continuations, finishes or keeps them)", "minimt.generate:beam_search",
         "notebook 06, section 9", _check_beam_task),
]
