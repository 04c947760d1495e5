"""Generation: exact filters, cache == no cache, sampling statistics, beam search == exhaustive
search, left padding == one prompt at a time, EOS, streaming and clear errors."""
import itertools

import pytest
import torch

from minimt import GPT, GPTConfig
from minimt.generate import left_pad, stream
from minimt.sampling import (apply_repetition_penalty, apply_temperature, process_logits,
                             top_k_filter, top_p_filter)

NEG_INF = float("-inf")
# chi-square critical values at significance 0.001 (any statistics table), by degrees of freedom
CHI2_CRITICAL_0_001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458,
                       7: 24.322, 8: 26.124, 9: 27.877, 10: 29.588}


def tiny_gpt(vocab_size=11, block_size=48, sharpen=1.0, seed=0):
    """A random 2-layer GPT; `sharpen` scales the tied embedding so the next-token distribution
    is far from uniform (random init gives nearly flat logits)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2,
                          n_embd=16)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(sharpen)
    return model


# ------------------------------------------------------------------ pure filters, exact masks

def test_top_k_keeps_exactly_the_k_largest_and_ties():
    logits = torch.tensor([[1.0, 3.0, -2.0, 2.0, 0.5],
                           [0.0, 1.0, 1.0, -1.0, 1.0]])
    kept = top_k_filter(logits, 2) > NEG_INF
    assert kept.tolist() == [[False, True, False, True, False],
                             [False, True, True, False, True]]  # a tie with the 2nd is kept
    assert torch.equal(top_k_filter(logits, 2)[kept], logits[kept])  # kept logits unchanged
    assert torch.equal(top_k_filter(logits, 99), logits)
    assert torch.equal(top_k_filter(logits, None), logits) and torch.equal(top_k_filter(logits, 0), logits)


@pytest.mark.parametrize("p, expected", [(0.3, {2}), (0.45, {2}), (0.6, {2, 0}), (0.8, {2, 0, 4}),
                                         (0.9, {2, 0, 4, 1}), (0.99, {2, 0, 4, 1, 3}),
                                         (1.0, {0, 1, 2, 3, 4})])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    # sorted: 0.5 (id 2), 0.25 (0), 0.101 (4), 0.099 (1), 0.05 (3); mass before each: 0, .5, .75, .851, .95
    probs = torch.tensor([0.25, 0.099, 0.50, 0.05, 0.101])
    filtered = top_p_filter(probs.log()[None], p)[0]
    assert set(torch.nonzero(filtered > NEG_INF).flatten().tolist()) == expected
    kept = filtered > NEG_INF
    assert torch.equal(filtered[kept], probs.log()[kept])


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    assert (top_p_filter(logits, 1e-6) > NEG_INF).tolist() == [[True, False, False],
                                                               [False, False, True]]


def test_repetition_penalty_and_temperature_follow_transformers():
    logits = torch.tensor([[2.0, -1.0, 0.5, 4.0]])
    seen = torch.tensor([[0, 1, 1]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 4.0]]  # positive / 2, negative * 2, unseen kept
    assert torch.equal(apply_temperature(logits, 0.5), logits * 2)
    # order: penalty, temperature, top-k, top-p; [1, -2, .5, 4] / 0.5, then top-2
    processed = process_logits(logits, seen, 2.0, 0.5, 2, None)
    assert processed.tolist() == [[2.0, NEG_INF, NEG_INF, 8.0]]
    assert torch.equal(process_logits(logits, seen, 1.0, 0.5, 1, 0.1, do_sample=False), logits)


def test_repetition_penalty_ignores_left_padding_as_transformers():
    """transformers' generate passes the padding lengths as prompt_ignore_length: a pad id that
    only fills the padding is not 'seen'."""
    transformers = pytest.importorskip("transformers")
    ids, mask = left_pad([[5, 6, 7, 8], [3, 9], [1]], pad_token_id=2)            # (3, 4)
    logits = torch.randn(3, 11, generator=torch.Generator().manual_seed(0))
    processor = transformers.RepetitionPenaltyLogitsProcessor(
        1.7, prompt_ignore_length=(mask != 0).int().argmax(dim=1))
    expected = processor(ids, logits.clone())
    got = apply_repetition_penalty(logits, ids, 1.7, attention_mask=mask)
    assert torch.equal(got, expected)
    assert not torch.equal(apply_repetition_penalty(logits, ids, 1.7), expected)  # pad 2 counted
    assert torch.equal(process_logits(logits, ids, 1.7, do_sample=False, attention_mask=mask), got)


# ------------------------------------------------------------------ the KV cache

@pytest.mark.parametrize("num_beams", [1, 3])
def test_cache_and_no_cache_give_the_same_logits_at_every_step(num_beams):
    model = tiny_gpt(sharpen=20.0)
    prompts, mask = left_pad([[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]], pad_token_id=0)
    runs = [model.generate(prompts, 20, num_beams=num_beams, attention_mask=mask, use_cache=c,
                           return_dict_in_generate=True) for c in (True, False)]
    cached, uncached = runs
    assert len(cached.logits) == len(uncached.logits) == 20
    for step, (a, b) in enumerate(zip(cached.logits, uncached.logits)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), f"step {step}: {(a - b).abs().max()}"
    assert torch.equal(cached.sequences, uncached.sequences)


def test_left_padded_batch_equals_each_prompt_alone():
    model = tiny_gpt(sharpen=20.0)
    prompts = [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10]]
    ids, mask = left_pad(prompts, pad_token_id=0)
    for kwargs in (dict(), dict(num_beams=3, num_return_sequences=2)):
        batch = model.generate(ids, 12, attention_mask=mask, **kwargs)
        r = kwargs.get("num_return_sequences", 1)
        for row, prompt in enumerate(prompts):
            alone = model.generate(torch.tensor([prompt]), 12, **kwargs)
            assert torch.equal(batch[row * r:(row + 1) * r, ids.shape[1] - len(prompt):], alone)


def test_positions_beyond_block_size_are_refused():
    model = tiny_gpt(block_size=16)
    with pytest.raises(ValueError, match="block_size=16.*max_new_tokens <= 6"):
        model.generate(torch.zeros(1, 10, dtype=torch.long), 7)
    assert model.generate(torch.zeros(1, 10, dtype=torch.long), 6).shape == (1, 16)


# ------------------------------------------------------------------ sampling

def chi_square(counts, probs):
    """Pearson's statistic sum (observed - expected)^2 / expected over the categories in probs."""
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_sampled_tokens_follow_the_filtered_distribution():
    model = tiny_gpt(vocab_size=11, sharpen=5.0)
    prompt = torch.tensor([[3, 1, 4]])
    settings = dict(temperature=0.8, top_k=7, top_p=0.9, repetition_penalty=1.3)
    logits = model(prompt)[0][:, -1].detach()                                      # (1, V)
    target = process_logits(logits, prompt, **settings).softmax(-1)[0].double()
    kept = target > 0
    n = 20000
    out = model.generate(prompt, 1, do_sample=True, num_return_sequences=n, seed=1234, **settings)
    counts = torch.bincount(out[:, -1], minlength=11).double()
    assert counts[~kept].sum() == 0, "a filtered-out token was sampled"
    df = int(kept.sum()) - 1
    assert 3 <= df <= 10, f"the filters should leave a few tokens, left {df + 1}"
    stat = chi_square(counts[kept], target[kept])
    assert stat < CHI2_CRITICAL_0_001[df], f"chi2={stat:.2f} with {df} dof"
    # power check: the unfiltered distribution is rejected by the same statistic
    unfiltered = logits.softmax(-1)[0].double()
    assert chi_square(counts, unfiltered) > 10 * CHI2_CRITICAL_0_001[10]


def test_seed_makes_sampling_reproducible():
    model = tiny_gpt(sharpen=5.0)
    prompt = torch.tensor([[1, 2], [3, 4]])
    a = model.generate(prompt, 15, do_sample=True, seed=7, num_return_sequences=3)
    b = model.generate(prompt, 15, do_sample=True, seed=7, num_return_sequences=3)
    c = model.generate(prompt, 15, do_sample=True, seed=8, num_return_sequences=3)
    assert a.shape == (6, 17) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[::3, :2], prompt)  # rows are prompt 0 (x3) then prompt 1 (x3)


# ------------------------------------------------------------------ beam search

@pytest.mark.parametrize("new_tokens, num_beams", [(2, 5), (3, 25)])
def test_beam_search_with_enough_beams_equals_exhaustive_search(new_tokens, num_beams):
    vocab = 5
    model = tiny_gpt(vocab_size=vocab, sharpen=30.0)
    prompt = torch.tensor([[1, 3, 2]])
    continuations = torch.tensor(list(itertools.product(range(vocab), repeat=new_tokens)))
    full = torch.cat((prompt.expand(len(continuations), -1), continuations), dim=1)
    log_probs = model(full)[0].detach().log_softmax(-1)[:, prompt.shape[1] - 1:-1]   # (N, new, V)
    total = log_probs.gather(-1, continuations[..., None]).sum((1, 2))      # (N,)
    best = total.topk(num_beams)
    out = model.generate(prompt, new_tokens, num_beams=num_beams, num_return_sequences=num_beams,
                         return_dict_in_generate=True)
    assert torch.equal(out.sequences[:, prompt.shape[1]:], continuations[best.indices])
    assert torch.allclose(out.sequences_scores, best.values / new_tokens, atol=1e-5)


# ------------------------------------------------------------------ EOS and streaming

def test_greedy_stops_at_eos_and_pads_finished_rows():
    model = tiny_gpt(sharpen=20.0)
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = model.generate(prompts, 20)
    eos = int(free[0, 5])  # the token row 0 produces at its third step
    first_eos = [int(torch.nonzero(r[3:] == eos)[0]) if (r[3:] == eos).any() else None for r in free]
    out = model.generate(prompts, 20, eos_token_id=eos, pad_token_id=10)
    for row, stop in enumerate(first_eos):
        if stop is None:
            assert torch.equal(out[row], free[row])
        else:
            assert torch.equal(out[row, :3 + stop + 1], free[row, :3 + stop + 1])
            assert (out[row, 3 + stop + 1:] == 10).all()
    if all(s is not None for s in first_eos):  # everyone stopped: the output is shorter
        assert out.shape[1] == 3 + max(first_eos) + 1


def test_streaming_yields_the_tokens_of_generate():
    model = tiny_gpt(sharpen=5.0)
    prompt = torch.tensor([[1, 2, 3]])
    seen = []
    out = model.generate(prompt, 10, do_sample=True, seed=3, streamer=seen.append)
    assert torch.equal(torch.stack(seen, dim=1), out[:, 3:])
    assert torch.equal(torch.stack(list(stream(model, prompt, 10, do_sample=True, seed=3)), 1),
                       out[:, 3:])

    class PutEnd:  # transformers' streamer protocol: the prompt first, then each step, then end
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(value)

        def end(self):
            self.calls.append("end")

    streamer = PutEnd()
    model.generate(prompt, 4, streamer=streamer)
    assert torch.equal(streamer.calls[0], prompt) and len(streamer.calls) == 6
    assert streamer.calls[-1] == "end"


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("kwargs, message", [
    (dict(do_sample=True, top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
    (dict(do_sample=True, top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
    (dict(do_sample=True, temperature=0.0), "temperature=0.0 must be > 0 when sampling"),
    (dict(num_return_sequences=3), "num_return_sequences=3 is more than num_beams=1"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences=3 is more than num_beams=2"),
    (dict(num_beams=2, do_sample=True), "beam sampling"),
    (dict(top_k=-1), "top_k=-1 must be a non-negative integer"),
    (dict(repetition_penalty=0.0), "repetition_penalty=0.0 must be > 0"),
    (dict(max_new_tokens=0), "max_new_tokens=0 must be a positive integer"),
    (dict(max_new_tokens=100), "block_size=48"),
    (dict(attention_mask=torch.tensor([[1, 1, 0]])), "must be left padding"),
    (dict(num_beams=2, streamer=print), "streaming needs num_beams=1"),
])
def test_bad_arguments_get_clear_errors(kwargs, message):
    model = tiny_gpt()
    kwargs = {"max_new_tokens": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor([[1, 2, 3]]), **kwargs)


@pytest.mark.parametrize("ids, message", [(torch.tensor([1, 2]), r"shape \(batch, seq\)"),
                                          (torch.tensor([[1, 99]]), r"ids in \[0, 11\)")])
def test_bad_prompts_get_clear_errors(ids, message):
    with pytest.raises(ValueError, match=message):
        tiny_gpt().generate(ids, 3)


def test_temperature_is_ignored_by_greedy_decoding():
    model = tiny_gpt(sharpen=5.0)
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(model.generate(prompt, 8), model.generate(prompt, 8, temperature=0.1))


# ------------------------------------------------------------------ tensor-parallel decoding

TP_SETTINGS = [dict(), dict(do_sample=True, top_k=5, top_p=0.9, seed=3),
               dict(num_beams=3, num_return_sequences=2)]


def _tp_decode(ctx, state, config, prompt):
    """On one rank: the serial weights, sliced for tensor parallelism, decoding the prompt with
    greedy, sampling and beam search; plus the shape of this rank's first-layer cache."""
    from minimt.generate import Decoder
    from minimt.parallel.tensor import apply_tensor_parallel
    model = GPT(config).eval()
    model.load_state_dict(state)
    apply_tensor_parallel(model, ctx)
    decoder = Decoder(model, prompt)
    decoder.prefill()
    return [model.generate(prompt, 16, **kw) for kw in TP_SETTINGS], tuple(decoder.caches[0].k.shape)


def test_tensor_parallel_decoding_gives_the_serial_tokens():
    from minimt.parallel.launch import launch
    model = tiny_gpt(vocab_size=11, sharpen=5.0)
    prompt = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    serial = [model.generate(prompt, 16, **kw) for kw in TP_SETTINGS]
    results = launch(_tp_decode, model.state_dict(), model.config, prompt, tp=2, timeout_s=60)
    config = model.config
    for outputs, cache_shape in results:
        for kw, got, expected in zip(TP_SETTINGS, outputs, serial):
            assert torch.equal(got, expected), f"rank output differs from serial with {kw}"
        assert cache_shape == (2, config.n_head // 2, 4, config.head_dim)  # this rank's heads only
