"""GPTConfig validates itself with messages that say what to change; presets have the papers' shapes."""
import pytest

from minimt import PRESETS, GPTConfig, param_count


def test_defaults_are_nanogpt_shakespeare_char():
    assert GPTConfig() == GPTConfig.from_preset("nanogpt-shakespeare-cpu")
    c = GPTConfig()
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (65, 64, 4, 4, 128)
    assert c.head_dim == 32 and c.bias is False and c.dropout == 0.0


@pytest.mark.parametrize("changes, message", [
    (dict(n_head=6), "n_embd=128 is not divisible by n_head=6"),
    (dict(n_layer=0), "n_layer=0 must be a positive integer"),
    (dict(vocab_size=-3), "vocab_size=-3 must be a positive integer"),
    (dict(block_size=2.5), "block_size=2.5 must be a positive integer"),
    (dict(dropout=1.0), "dropout=1.0 must be in [0, 1)"),
    (dict(gelu_approximate="fast"), "gelu_approximate='fast'"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps=0.0 must be positive"),
])
def test_bad_values_are_refused_with_a_clear_message(changes, message):
    with pytest.raises(ValueError) as err:
        GPTConfig(**changes)
    assert message in str(err.value)


def test_presets_and_overrides():
    gpt2 = GPTConfig.from_preset("gpt2-124m")
    assert (gpt2.vocab_size, gpt2.block_size, gpt2.n_layer, gpt2.n_head, gpt2.n_embd) == (
        50257, 1024, 12, 12, 768)
    assert gpt2.bias and gpt2.gelu_approximate == "tanh"
    assert GPTConfig.from_preset("gpt2-124m", n_layer=2).n_layer == 2
    with pytest.raises(ValueError, match="unknown preset 'gpt3'"):
        GPTConfig.from_preset("gpt3")
    with pytest.raises(ValueError, match=r"unknown GPTConfig field\(s\) \['layers'\]"):
        GPTConfig.from_preset("gpt2-124m", layers=3)
    assert set(PRESETS) >= {"nanogpt-shakespeare-cpu", "gpt2-124m", "mt-nlg-530b"}


def test_mt_nlg_shape_from_the_paper():
    # Smith et al. 2022, arXiv 2201.11990: 105 layers, hidden 20480, 128 heads, sequence 2048, 530B.
    c = GPTConfig.from_preset("mt-nlg-530b")
    assert (c.n_layer, c.n_embd, c.n_head, c.block_size) == (105, 20480, 128, 2048)
    assert abs(param_count(c) - 530e9) / 530e9 < 0.01
