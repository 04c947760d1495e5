"""minimt.evaluate against independent oracles: the model's own loss on the concatenation,
greedy decoding, transformers' GPT-2 on the same weights (Hugging Face's perplexity guide), and
the serial model's scores against a tp 2 x pp 2 mesh."""
import math

import pytest
import torch
import torch.nn.functional as F

from minimt import GPT, GPTConfig
from minimt.evaluate import (Score, fewshot_indices, fewshot_prompt, lambada_split, per_byte,
                             per_token, perplexity, score_batch, sliding_window_nll, word_level)
from minimt.model import IGNORE_INDEX
from minimt.parallel import launch

CONFIG = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
CONTEXTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [7], [9, 9, 2]]
CONTINUATIONS = [[4, 5], [1, 2, 3, 4], [9], [30, 31, 32]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def loss_oracle(model, context, continuation):
    """Sum of the continuation's log-probabilities from the model's mean loss on the
    concatenation, the context's targets ignored."""
    row = torch.tensor((context + continuation)[-(CONFIG.block_size + 1):])
    targets = row[1:].clone()
    targets[:len(targets) - len(continuation)] = IGNORE_INDEX
    with torch.no_grad():
        _, loss = model(row[None, :-1], targets[None])
    return -loss.item() * len(continuation)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_batched_scores_equal_one_at_a_time_and_the_models_loss(model, padding):
    batched = score_batch(model, CONTEXTS, CONTINUATIONS, padding=padding)
    for context, continuation, got in zip(CONTEXTS, CONTINUATIONS, batched):
        alone = score_batch(model, [context], [continuation])[0]
        assert got.num_tokens == alone.num_tokens == len(continuation)
        assert got.is_greedy == alone.is_greedy
        assert math.isclose(got.logprob, alone.logprob, abs_tol=1e-4)
        assert math.isclose(got.logprob, loss_oracle(model, context, continuation), abs_tol=1e-4)


def test_normalisations_and_the_greedy_check(model):
    context = [3, 1, 4]
    greedy = model.generate(torch.tensor([context]), 3)[0, 3:].tolist()  # the argmax path
    score = score_batch(model, [context, context], [greedy, greedy[:2] + [(greedy[2] + 1) % 40]])
    assert score[0].is_greedy and not score[1].is_greedy
    s = Score(-6.0, False, 3)
    assert per_token(s) == -2.0 and per_byte(s, " été") == -1.0   # 6 UTF-8 bytes


def test_lambada_split_and_word_level_report():
    assert lambada_split("and so, adieu, sir ") == ("and so, adieu,", " sir")
    with pytest.raises(ValueError, match="two words"):
        lambada_split("alone")
    report = word_level(nll=8.0, num_tokens=4, text="two words")
    assert report["tokens_per_word"] == 2.0
    assert math.isclose(report["word_perplexity"], math.exp(4.0))


def hf_documented_perplexity(hf, ids, max_length, stride, exact_counts):
    """Hugging Face's perplexity guide, line for line; exact_counts=True weights each window's
    mean loss by the targets it really averages (the guide subtracts one per window)."""
    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            neg_log_likelihood = hf(input_ids, labels=target_ids).loss
        num_valid_tokens = (target_ids[:, 1:] != -100).sum().item() if exact_counts else (
            (target_ids != -100).sum().item() - target_ids.size(0))
        nll_sum += neg_log_likelihood.item() * num_valid_tokens
        n_tokens += num_valid_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


def test_sliding_window_perplexity_equals_hugging_faces_method_with_transformers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=1,
        eos_token_id=2)).eval()
    model = GPT.from_hf_gpt2(hf).eval()  # the same weights (minimt.hf_gpt2)
    ids = torch.randint(40, (90,), generator=torch.Generator().manual_seed(1)).tolist()
    for stride in (4, 10, 16):
        nll, count = sliding_window_nll(model, ids, stride, max_length=16)
        hf_nll, hf_count = hf_documented_perplexity(hf, ids, 16, stride, exact_counts=True)
        assert count == hf_count and math.isclose(nll, hf_nll, rel_tol=1e-5)
    # stride = context: windows that do not overlap, where the guide's own count is exact
    nll, count = sliding_window_nll(model, ids, 16, max_length=16)
    assert (nll, count) == pytest.approx(hf_documented_perplexity(hf, ids, 16, 16, False), 1e-5)
    # each token scored once; a window of block_size + 1 lets the last token see a full context
    assert sliding_window_nll(model, ids, 16)[1] == len(ids) - 1
    assert perplexity(model, ids) > 1


def test_fewshot_draws_are_seeded_distinct_and_never_the_question():
    draws = [fewshot_indices(10, 4, exclude=3, seed=s) for s in range(20)]
    assert all(len(set(d)) == 4 and 3 not in d for d in draws)
    assert draws[0] == fewshot_indices(10, 4, exclude=3, seed=0) and len(set(map(tuple, draws))) > 1
    with pytest.raises(ValueError, match="only 9"):
        fewshot_indices(10, 10, exclude=0, seed=0)
    shot = {"context": "Q: 1+1?", "choices": ["2", "3"], "answer": 0}
    assert fewshot_prompt([shot], {"context": "Q: 2+2?"}) == "Q: 1+1? 2\n\nQ: 2+2?"


def _mesh_scores(ctx):
    from minimt.parallel.mesh_eval import mesh_loglikelihoods
    torch.manual_seed(0)
    return mesh_loglikelihoods(GPT(CONFIG), ctx, CONTEXTS, CONTINUATIONS)


def test_tp2_pp2_scores_equal_the_serial_model(model):
    serial = [s.logprob for s in score_batch(model, CONTEXTS, CONTINUATIONS)]
    for scores in launch(_mesh_scores, tp=2, pp=2, timeout_s=60):
        assert scores == pytest.approx(serial, abs=1e-4)
