"""Activation memory measured exactly (saved_tensors_hooks) equals minimt's per-layer formula, for
every recompute mode, attention kind, dtype, and under tensor and sequence parallelism; and
recomputation leaves the gradients unchanged."""
import pytest
import torch

from minimt import GPT, GPTConfig
from minimt.memory import (SavedTensorBytes, layer_activation_bytes, layer_activation_terms,
                           measure_layer)
from minimt.parallel import launch
from minimt.parallel.tensor import apply_tensor_parallel

SHAPES = [(16, 3, 32, 4, True), (24, 2, 48, 6, False), (8, 1, 64, 2, True), (32, 2, 64, 8, False)]


def _model(s, h, a, bias, recompute="none", attention="fused", dtype=torch.float32, dropout=0.0):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50, block_size=s, n_layer=2, n_head=a, n_embd=h, bias=bias,
                       dropout=dropout)
    model = GPT(config, recompute=recompute).to(dtype)
    for block in model.transformer.h:
        block.attn.fused = attention == "fused"
    return model


@pytest.mark.parametrize("s, b, h, a, bias", SHAPES)
@pytest.mark.parametrize("dtype, nbytes", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_measured_layer_bytes_equal_the_formula(s, b, h, a, bias, dtype, nbytes):
    for attention in ("fused", "formula"):
        for recompute in ("none", "selective", "full"):
            model = _model(s, h, a, bias, recompute, attention, dtype)
            measured = measure_layer(model, torch.randn(b, s, h, dtype=dtype), layer=1).bytes
            formula = layer_activation_bytes(s, b, h, a, recompute=recompute, attention=attention,
                                             dtype_bytes=nbytes)
            assert measured == formula, (s, b, h, a, dtype, attention, recompute)


def test_recomputation_saves_memory_in_the_expected_order():
    model = _model(32, 64, 8, True, attention="formula")
    x = torch.randn(2, 32, 64)
    saved = {}
    for mode in ("none", "selective", "full"):
        model.recompute = mode
        saved[mode] = measure_layer(model, x).bytes
    assert saved["full"] == 2 * 32 * 64 * 4  # only the block's input
    assert saved["full"] < saved["selective"] < saved["none"]
    # selective drops exactly the s^2 terms (softmax output, masked weights, masks)
    terms = layer_activation_terms(32, 2, 64, 8, attention="formula")
    s2 = sum(v for k, v in terms.items() if "softmax" in k or "masked" in k or "masks" in k)
    assert saved["none"] - saved["selective"] == s2


def test_shared_storage_is_counted_once_and_parameters_are_left_out():
    linear = torch.nn.Linear(8, 24, bias=False)
    x = torch.randn(4, 8, requires_grad=True)
    with SavedTensorBytes(exclude=linear) as saved:
        qkv = linear(x)                                   # saves x (and the weight: excluded)
        q, k, v = qkv.split(8, dim=-1)
        (q * k * v).sum()                                 # saves views of qkv's one storage
    assert saved.bytes == 4 * 8 * 4 + 4 * 24 * 4 + 4 * 8 * 4  # x, qkv once, the product q * k
    assert len(saved.tensors) == 3


@pytest.mark.parametrize("attention", ["fused", "formula"])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_recomputation_leaves_gradients_unchanged(attention, dropout):
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    grads = {}
    for mode in ("none", "selective", "full"):
        model = _model(16, 32, 4, True, mode, attention, dropout=dropout)
        torch.manual_seed(5)  # the same dropout masks; checkpoint replays the RNG state
        _, loss = model(idx, targets=idx)
        loss.backward()
        grads[mode] = {n: p.grad for n, p in model.named_parameters()}
    for mode in ("selective", "full"):
        for name, g in grads["none"].items():
            assert (grads[mode][name] - g).abs().max().item() < 1e-6, (mode, name)


def test_bad_recompute_mode_is_refused():
    with pytest.raises(ValueError, match="recompute='some'"):
        GPT(GPTConfig(), recompute="some")
    with pytest.raises(ValueError, match="recompute='some'"):
        layer_activation_bytes(8, 1, 32, 4, recompute="some")


def _measure_parallel(ctx, s, b, h, a, cases):
    out = []
    for sequence_parallel, recompute, attention in cases:
        model = _model(s, h, a, True, recompute, attention)
        apply_tensor_parallel(model, ctx, sequence_parallel=sequence_parallel)
        tokens = s // ctx.tp_size if sequence_parallel else s
        x = torch.randn(b, tokens, h)
        out.append(measure_layer(model, x).bytes)
    return out


@pytest.mark.parametrize("tp, s, b, h, a", [(2, 16, 3, 32, 4), (4, 32, 2, 64, 8)])
def test_tensor_and_sequence_parallel_layer_bytes_equal_the_formula(tp, s, b, h, a):
    cases = [(sp, rc, att) for sp in (False, True) for rc in ("none", "selective", "full")
             for att in ("fused", "formula")]
    for rank_bytes in launch(_measure_parallel, s, b, h, a, cases, tp=tp, timeout_s=60):
        for (sp, rc, att), measured in zip(cases, rank_bytes):
            formula = layer_activation_bytes(s, b, h, a, t=tp, sequence_parallel=sp,
                                             recompute=rc, attention=att)
            assert measured == formula, (tp, sp, rc, att)


def test_exclude_takes_a_module_a_tensor_or_an_iterable():
    linear = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8, requires_grad=True)
    for exclude in (linear, linear.parameters(), [linear.weight, linear.bias], [linear]):
        with SavedTensorBytes(exclude=exclude) as saved:
            linear(x)
        assert saved.bytes == x.numel() * 4  # only the input; the weight is excluded
    with SavedTensorBytes(exclude=x) as saved:
        linear(x)
    assert saved.bytes == 8 * 8 * 4  # now the weight counts and the input does not
