"""GPT-2 conversion: a random transformers GPT2LMHeadModel (nothing downloaded) and its minimt twin
give equal logits and equal greedy / beam-search output; the conversion round-trips."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from minimt import GPT, GPTConfig  # noqa: E402
from minimt.generate import left_pad  # noqa: E402
from minimt.hf_gpt2 import config_from_hf_gpt2, hf_gpt2_config_dict  # noqa: E402

VOCAB = 97


def random_hf_gpt2(seed=0, **changes):
    """A small random GPT-2 in eval mode (the ids for BOS/EOS inside the vocabulary)."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    fields.update(changes)
    model = GPT2LMHeadModel(GPT2Config(**fields)).eval()
    with torch.no_grad():  # spread the next-token distribution so argmax ties cannot happen
        model.transformer.wte.weight.mul_(20.0)
    return model


@pytest.fixture(scope="module")
def pair():
    hf = random_hf_gpt2()
    return hf, GPT.from_hf_gpt2(hf).eval()


def test_logits_match_transformers(pair):
    hf, ours = pair
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]], pad_token_id=0)
    with torch.no_grad():
        assert torch.allclose(ours(ids)[0], hf(ids).logits, atol=1e-5, rtol=0)
        ours_padded = ours.generate(ids, 1, attention_mask=mask, return_dict_in_generate=True)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # counted from each row's first real token
        hf_padded = hf(ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    assert torch.allclose(ours_padded.logits[0], hf_padded, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", [dict(), dict(repetition_penalty=1.5),
                                    dict(eos_token_id="frequent")])
def test_greedy_output_matches_transformers(pair, kwargs):
    hf, ours = pair
    ids, mask = left_pad([[5, 6, 7, 8, 9], [12, 13]], pad_token_id=0)
    if kwargs.get("eos_token_id") == "frequent":  # a token greedy decoding does produce
        kwargs = dict(eos_token_id=int(ours.generate(ids, 4, attention_mask=mask)[1, -1]))
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=25, do_sample=False,
                           pad_token_id=0, **kwargs)
    got = ours.generate(ids, 25, attention_mask=mask, pad_token_id=0, **kwargs)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("num_beams, penalty", [(1, 2.0), (3, 20.0)])
def test_repetition_penalty_on_a_left_padded_batch_matches_transformers(pair, num_beams, penalty):
    """The pad id is the token the short row, alone, generates first: penalising it because it
    fills the padding (attention_mask 0) changes the output; transformers ignores those positions.
    (Beam search penalises log-probabilities, near 0 for the best token: it takes a large
    penalty to change its choice.)"""
    hf, ours = pair
    prompts = [[5, 6, 7, 8, 9], [30, 31]]
    settings = dict(max_new_tokens=8, do_sample=False, repetition_penalty=penalty,
                    num_beams=num_beams)
    wanted = int(hf.generate(torch.tensor([prompts[1]]), pad_token_id=0, **settings)[0, 2])
    assert wanted not in prompts[1]
    ids, mask = left_pad(prompts, pad_token_id=wanted)
    expected = hf.generate(ids, attention_mask=mask, pad_token_id=wanted, **settings)
    got = ours.generate(ids, attention_mask=mask, pad_token_id=wanted, **settings)
    assert got[1, ids.shape[1]] == wanted
    assert torch.equal(got, expected)


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, False), (0.5, True), (2.0, False)])
def test_beam_search_matches_transformers(pair, length_penalty, early_stopping):
    hf, ours = pair
    ids, mask = left_pad([[5, 6, 7, 8, 9], [12, 13]], pad_token_id=0)
    eos = int(ours.generate(ids, 3, attention_mask=mask)[0, -1])  # makes some beams finish early
    # pad_token_id=3, not 0: transformers' beam search fills with EOS when pad_token_id is 0 (falsy)
    settings = dict(max_new_tokens=10, num_beams=4, num_return_sequences=3, eos_token_id=eos,
                    pad_token_id=3, length_penalty=length_penalty, early_stopping=early_stopping)
    expected = hf.generate(ids, attention_mask=mask, do_sample=False, output_scores=True,
                           return_dict_in_generate=True, **settings)
    got = ours.generate(ids, attention_mask=mask, return_dict_in_generate=True, **settings)
    assert (got.sequences[:, ids.shape[1]:] == eos).any(), "no beam finished: the test is too weak"
    assert torch.equal(got.sequences, expected.sequences)
    assert torch.allclose(got.sequences_scores, expected.sequences_scores, atol=1e-5)


def eos_heavy_pair(eos_ids, boost=4.0):
    """The random GPT-2 with the EOS ids made likely after any context (their embeddings share a
    direction with the final layer norm's bias), so several beams rank EOS among their best."""
    hf = random_hf_gpt2()
    with torch.no_grad():
        bias = torch.randn(hf.config.n_embd, generator=torch.Generator().manual_seed(0))
        hf.transformer.ln_f.bias.copy_(bias)
        hf.transformer.wte.weight[eos_ids] += boost * bias / bias.norm()
    return hf, GPT.from_hf_gpt2(hf).eval()


def rescored(model, prompt, new_tokens, eos_ids, length_penalty):
    """sum of log p(token | prefix) over a hypothesis' tokens (up to its first EOS) / len ** lp."""
    ends = [i for i, t in enumerate(new_tokens) if t in eos_ids]
    new_tokens = new_tokens[:ends[0] + 1] if ends else new_tokens
    seq = torch.tensor([prompt + new_tokens])
    with torch.no_grad():
        log_probs = model(seq)[0][0, len(prompt) - 1:-1].log_softmax(-1)        # (new, V)
    total = log_probs.gather(-1, torch.tensor(new_tokens)[:, None]).sum().item()
    return total / len(new_tokens) ** length_penalty


@pytest.mark.parametrize("n_eos", [1, 2, 3])
def test_beam_search_with_several_eos_ids_matches_transformers(n_eos):
    """With n EOS ids, more than num_beams of the 2 * num_beams best candidates can end in EOS:
    transformers ranks max(2, 1 + n) * num_beams; every returned score is the sequence's own."""
    eos_ids = [40, 41, 42][:n_eos]
    hf, ours = eos_heavy_pair(eos_ids)
    prompts = [[5, 6, 7, 8, 9], [12, 13]]
    ids, mask = left_pad(prompts, pad_token_id=0)
    settings = dict(max_new_tokens=8, num_beams=3, num_return_sequences=3, eos_token_id=eos_ids,
                    pad_token_id=3, length_penalty=2.0, early_stopping="never")
    expected = hf.generate(ids, attention_mask=mask, do_sample=False, output_scores=True,
                           return_dict_in_generate=True, **settings)
    got = ours.generate(ids, attention_mask=mask, return_dict_in_generate=True, **settings)
    new = got.sequences[:, ids.shape[1]:]
    assert torch.isin(new, torch.tensor(eos_ids)).any(), "no beam finished: the test is too weak"
    assert torch.equal(got.sequences, expected.sequences)
    assert torch.allclose(got.sequences_scores, expected.sequences_scores, atol=1e-5)
    for row, (tokens, score) in enumerate(zip(new.tolist(), got.sequences_scores.tolist())):
        prompt = prompts[row // 3]
        assert score == pytest.approx(rescored(ours, prompt, tokens, eos_ids, 2.0), abs=1e-4), row


def test_round_trip_through_the_hf_state_dict(pair):
    hf, ours = pair
    exported = ours.to_hf_gpt2_state_dict()
    original = hf.state_dict()
    assert set(exported) == set(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name
    fresh = GPT2LMHeadModel(GPT2Config(**hf_gpt2_config_dict(ours.config), bos_token_id=1,
                                       eos_token_id=2)).eval()
    fresh.load_state_dict(exported, strict=True)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(fresh(ids).logits, ours(ids)[0], atol=1e-5, rtol=0)


def test_load_from_a_saved_directory_and_a_state_dict(pair, tmp_path):
    hf, ours = pair
    hf.save_pretrained(tmp_path)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert torch.allclose(GPT.from_hf_gpt2(tmp_path)(ids)[0], ours(ids)[0], atol=1e-6, rtol=0)
        for state_dict in (hf.state_dict(), hf.transformer.state_dict()):  # with/without LM head
            from_sd = GPT.from_hf_gpt2(state_dict, config=ours.config)
            assert torch.allclose(from_sd(ids)[0], ours(ids)[0], atol=1e-6, rtol=0)


def test_config_mapping_matches_the_gpt2_preset():
    assert config_from_hf_gpt2(GPT2Config()) == GPTConfig.from_preset("gpt2-124m")
    assert config_from_hf_gpt2(hf_gpt2_config_dict(GPTConfig.from_preset("gpt2-124m"))) \
        == GPTConfig.from_preset("gpt2-124m")
    assert config_from_hf_gpt2(GPT2Config(activation_function="gelu")).gelu_approximate == "none"


@pytest.mark.parametrize("source, message", [
    (dict(activation_function="relu"), "activation_function='relu' has no minimt equivalent"),
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True is not"),
    (dict(n_inner=50), "n_inner=50 is not a multiple of n_embd=32"),
])
def test_unsupported_gpt2_configs_are_refused(source, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf_gpt2(dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                 **source))


def test_bad_sources_are_refused(pair, tmp_path):
    hf, _ = pair
    with pytest.raises(ValueError, match="does not say n_head"):
        GPT.from_hf_gpt2(hf.state_dict())
    with pytest.raises(ValueError, match="no config.json"):
        GPT.from_hf_gpt2(tmp_path)
    untied = dict(hf.state_dict())
    untied["lm_head.weight"] = untied["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        GPT.from_hf_gpt2(untied, config=hf.config)
