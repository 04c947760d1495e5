"""The GPT: shapes, causality, the closed-form parameter count, FLOPs, caching and clear errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from minimt import GPT, GPTConfig, flops_per_token, param_count
from minimt.attention import KVCache

TINY = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


def tiny(seed=0, **changes):
    torch.manual_seed(seed)
    return GPT(TINY.replace(**changes))


def test_shapes_and_loss_is_next_token_cross_entropy():
    model = tiny()
    idx = torch.randint(0, 50, (3, 10))
    targets = torch.randint(0, 50, (3, 10))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 10, 50)
    expected = F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert model(idx)[1] is None
    # an untrained model is close to uniform: loss near ln(V)
    assert abs(loss.item() - math.log(50)) < 0.3


def test_ignored_targets_are_left_out_of_the_loss():
    model = tiny()
    idx = torch.randint(0, 50, (2, 8))
    targets = torch.randint(0, 50, (2, 8))
    masked = targets.clone()
    masked[:, :4] = -100
    logits, loss = model(idx, masked)
    expected = F.cross_entropy(logits[:, 4:].reshape(-1, 50), targets[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_the_future_does_not_leak_into_the_past():
    model = tiny()
    idx = torch.randint(0, 50, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 50
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("changes", [dict(), dict(bias=True), dict(mlp_ratio=2, n_layer=3),
                                     dict(vocab_size=7, block_size=5, n_embd=8, n_head=4)])
def test_parameter_count_matches_the_closed_form(changes):
    model = tiny(**changes)
    assert model.num_params() == param_count(model.config)
    c = model.config
    assert model.num_params(exclude_positions=True) == param_count(c) - c.block_size * c.n_embd


def test_reference_parameter_counts():
    # nanoGPT's shakespeare_char model reports 0.80M (positions excluded); GPT-2 small 124,439,808.
    nano = GPTConfig.from_preset("nanogpt-shakespeare-cpu")
    assert param_count(nano) - nano.block_size * nano.n_embd == 795_904
    assert param_count(GPTConfig.from_preset("gpt2-124m")) == 124_439_808


def test_embedding_and_output_weights_are_tied():
    model = tiny()
    assert model.lm_head.weight is model.transformer.wte.weight
    idx = torch.randint(0, 50, (2, 6))
    model(idx, idx)[1].backward()
    assert model.transformer.wte.weight.grad is not None


def test_flops_per_token_formula():
    c = GPTConfig.from_preset("gpt2-124m")
    n = param_count(c) - c.block_size * c.n_embd
    assert flops_per_token(c) == 6 * n + 12 * c.n_layer * c.n_embd * c.block_size
    assert flops_per_token(c, seq_len=1) < flops_per_token(c)


def test_same_seed_same_model():
    a, b = tiny(seed=3), tiny(seed=3)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_cached_decoding_equals_full_forward():
    model = tiny().eval()
    idx = torch.randint(0, 50, (2, 9))
    full = model(idx)[0]
    caches = [KVCache() for _ in model.transformer.h]
    first = model(idx[:, :5], kv_caches=caches)[0]
    rest = [model(idx[:, t:t + 1], kv_caches=caches)[0] for t in range(5, 9)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, atol=1e-5, rtol=0)


def test_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="longer than block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        model(torch.zeros(17, dtype=torch.long))
    with pytest.raises(ValueError, match="529.6B parameters"):
        GPT(GPTConfig.from_preset("mt-nlg-530b"))
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"n_layer": 2})
