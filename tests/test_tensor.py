"""Tensor parallelism on real gloo processes equals the serial model: logits, loss, every gradient,
and several optimizer steps; the communication is exactly Megatron's 2 + 2 all-reduces per layer."""
import copy

import pytest
import torch

from minimt import GPT, GPTConfig
from minimt.parallel import CommCounter, ParallelContext, launch
from minimt.parallel.tensor import apply_tensor_parallel, gather_vocab_parallel_logits

from helpers import batch_with_ignored_targets

# vocab 50 is padded to 52 for tp=4; biases on, to check replicated and sharded biases
CONFIG = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, bias=True)
B, T = 3, 16


def _batch():
    return batch_with_ignored_targets(CONFIG, B, T)


def _sharded_like(serial, tensors, ctx):
    """Shard `tensors` (name -> tensor shaped like the serial parameter) exactly as the weights."""
    clone = copy.deepcopy(serial)
    with torch.no_grad():
        for name, p in clone.named_parameters():
            p.copy_(tensors[name])
    return dict(apply_tensor_parallel(clone, ctx).named_parameters())


def _compare_with_serial(ctx, steps):
    torch.manual_seed(0)
    serial = GPT(CONFIG)
    model = apply_tensor_parallel(copy.deepcopy(serial), ctx)
    idx, targets = _batch()
    # SGD with momentum and weight decay, not AdamW: Adam divides by sqrt(v) + 1e-8, so gradients
    # that are ~0 in exact arithmetic (the key bias's is 0: softmax ignores a per-query shift; here
    # it is ~1e-13 of float32 noise) get lr-sized updates of random sign, and even tp=1 drifts
    # apart from the serial model by 1e-5 within 3 steps. Both are elementwise on the shards.
    opt_s = torch.optim.SGD(serial.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    opt_p = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    worst = {"logits": 0.0, "loss": 0.0, "grad": 0.0, "param": 0.0}
    for _ in range(steps):
        logits_s, loss_s = serial(idx, targets)
        logits_p, loss_p = model(idx, targets)
        full = gather_vocab_parallel_logits(logits_p, ctx, CONFIG.vocab_size)
        worst["logits"] = max(worst["logits"], (full - logits_s).abs().max().item())
        worst["loss"] = max(worst["loss"], abs(loss_p.item() - loss_s.item()))
        opt_s.zero_grad()
        opt_p.zero_grad()
        loss_s.backward()
        loss_p.backward()
        expected = _sharded_like(serial, {n: p.grad for n, p in serial.named_parameters()}, ctx)
        for name, p in model.named_parameters():
            worst["grad"] = max(worst["grad"], (p.grad - expected[name]).abs().max().item())
        opt_s.step()
        opt_p.step()
    expected = _sharded_like(serial, dict(serial.named_parameters()), ctx)
    for name, p in model.named_parameters():
        worst["param"] = max(worst["param"], (p - expected[name]).abs().max().item())
    return worst


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_tensor_parallel_gpt_equals_serial(tp):
    for rank, worst in enumerate(launch(_compare_with_serial, 3, tp=tp, timeout_s=60)):
        for what, error in worst.items():
            assert error < 1e-5, f"rank {rank}: {what} differs from serial by {error:.2e}"


def _count_communication(ctx):
    torch.manual_seed(0)
    model = apply_tensor_parallel(GPT(CONFIG), ctx)
    idx, targets = _batch()
    with CommCounter() as forward:
        _, loss = model(idx, targets)
    with CommCounter() as backward:
        loss.backward()
    bt, btc = B * T, B * T * CONFIG.n_embd
    return {
        "fwd_btc": len([r for r in forward.select("all_reduce", "tp") if r.numel == btc]),
        "fwd_bt": len([r for r in forward.select("all_reduce", "tp") if r.numel == bt]),
        "fwd_total": forward.count(),
        "bwd_btc": len([r for r in backward.select("all_reduce", "tp") if r.numel == btc]),
        "bwd_total": backward.count(),
        "fwd_bytes": forward.bytes("all_reduce", "tp"),
    }


def test_megatron_communication_pattern():
    L, bt, btc = CONFIG.n_layer, B * T, B * T * CONFIG.n_embd
    for counts in launch(_count_communication, tp=2, timeout_s=60):
        # 2 g's per layer + the embedding's g; the loss's 3 all-reduces of (B, T): max,
        # target logit, sum of exponentials. Nothing else.
        assert counts["fwd_btc"] == 2 * L + 1
        assert counts["fwd_bt"] == 3
        assert counts["fwd_total"] == 2 * L + 1 + 3
        assert counts["fwd_bytes"] == 4 * ((2 * L + 1) * btc + 3 * bt)
        # 2 f's per layer + the output layer's f
        assert counts["bwd_btc"] == 2 * L + 1
        assert counts["bwd_total"] == 2 * L + 1


def test_serial_context_is_the_identity():
    torch.manual_seed(0)
    serial = GPT(CONFIG)
    model = apply_tensor_parallel(copy.deepcopy(serial), ParallelContext())
    idx, targets = _batch()
    torch.testing.assert_close(model(idx, targets)[1], serial(idx, targets)[1])


def _apply(ctx, config):
    apply_tensor_parallel(GPT(config), ctx)


def test_clear_errors_for_shapes_that_do_not_split():
    with pytest.raises(RuntimeError, match="n_head=6 is not divisible by tensor-parallel size 4"):
        launch(_apply, CONFIG.replace(n_head=6, n_embd=48), tp=4, timeout_s=30)
    with pytest.raises(RuntimeError, match="dropout=0.1"):
        launch(_apply, CONFIG.replace(dropout=0.1), tp=2, timeout_s=30)


def test_keeps_the_models_dtype():
    # the regrouped c_attn used to be created in float32 whatever the model's dtype
    model = apply_tensor_parallel(GPT(CONFIG).double(), ParallelContext())
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    idx, targets = _batch()
    assert model(idx, targets)[1].dtype == torch.float64
