"""Sequence parallelism (Korthikanti et al. 2022) on real gloo processes: the same loss and every
gradient as the serial model, LayerNorm gradients summed over the tp group, and the same bytes
on the wire as plain tensor parallelism (all-gathers and reduce-scatters for all-reduces)."""
import copy

import pytest
import torch

from minimt import GPT, GPTConfig
from minimt.parallel import CommCounter, launch
from minimt.parallel.comm import ring_bytes_of_records
from minimt.parallel.mappings import REGATHER_PHASE
from minimt.parallel.tensor import apply_tensor_parallel, gather_vocab_parallel_logits

from helpers import batch_with_ignored_targets

CONFIG = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, bias=True)
B, T = 3, 16


def _batch():
    return batch_with_ignored_targets(CONFIG, B, T)


def _compare(ctx, recompute):
    torch.manual_seed(0)
    serial = GPT(CONFIG, recompute=recompute)
    model = apply_tensor_parallel(copy.deepcopy(serial), ctx, sequence_parallel=True)
    idx, targets = _batch()
    logits_s, loss_s = serial(idx, targets)
    logits_p, loss_p = model(idx, targets)
    loss_s.backward()
    loss_p.backward()
    worst = {"loss": abs(loss_p.item() - loss_s.item()),
             "logits": (gather_vocab_parallel_logits(logits_p, ctx, CONFIG.vocab_size)
                        - logits_s).abs().max().item()}
    # the serial gradients, sharded exactly as the weights are
    sharded = dict(apply_tensor_parallel(_with_grads_as_weights(serial), ctx).named_parameters())
    worst["grad"] = max((p.grad - sharded[name]).abs().max().item()
                        for name, p in model.named_parameters())
    ln = model.transformer.h[0].ln_1.weight
    return worst, getattr(ln, "sequence_parallel", False)


def _with_grads_as_weights(serial):
    """A copy of the serial model whose weights are its gradients."""
    clone = copy.deepcopy(serial)
    with torch.no_grad():
        for (name, p), (_, q) in zip(clone.named_parameters(), serial.named_parameters()):
            p.copy_(q.grad)
    return clone


@pytest.mark.parametrize("tp", [2, 4])
def test_sequence_parallel_gpt_equals_serial(tp):
    for rank, (worst, marked) in enumerate(launch(_compare, "none", tp=tp, timeout_s=60)):
        assert marked, "LayerNorm weights must be marked sequence_parallel"
        for what, error in worst.items():
            assert error < 1e-5, f"tp={tp} rank {rank}: {what} differs from serial by {error:.2e}"


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_sequence_parallel_with_recomputation_equals_serial(recompute):
    for rank, (worst, _) in enumerate(launch(_compare, recompute, tp=2, timeout_s=60)):
        for what, error in worst.items():
            assert error < 1e-5, f"{recompute}, rank {rank}: {what} differs by {error:.2e}"


def _count(ctx, sequence_parallel):
    torch.manual_seed(0)
    model = apply_tensor_parallel(GPT(CONFIG), ctx, sequence_parallel=sequence_parallel)
    idx, targets = _batch()
    with CommCounter() as forward:
        _, loss = model(idx, targets)
    with CommCounter() as backward:
        loss.backward()
    grad_sync = [r for r in backward.select("all_reduce", "tp") if r.numel != B * T * CONFIG.n_embd]
    regather = backward.select(phase=REGATHER_PHASE)
    activations = [r for r in backward.records
                   if (r not in grad_sync or not sequence_parallel) and r not in regather]
    return {"forward": ring_bytes_of_records(forward.records, ctx.tp_size),
            "backward": ring_bytes_of_records(activations, ctx.tp_size),
            "grad_sync_numel": sum(r.numel for r in grad_sync) if sequence_parallel else 0,
            "kinds": sorted({(r.kind, r.phase) for r in forward.records + backward.records}),
            "forward_gathers": forward.count("all_gather", "tp"),
            "forward_reduce_scatters": forward.count("reduce_scatter", "tp"),
            "regather": [(r.kind, r.numel) for r in regather],
            "summary": backward.summary()}


def test_same_bytes_on_the_wire_as_plain_tensor_parallelism():
    L, C = CONFIG.n_layer, CONFIG.n_embd
    for tp in (2, 4):
        plain = launch(_count, False, tp=tp, timeout_s=60)[0]
        sp = launch(_count, True, tp=tp, timeout_s=60)[0]
        assert sp["forward"] == plain["forward"] > 0
        assert sp["backward"] == plain["backward"] > 0
        # per layer 2 gathers (before c_attn, c_fc) + the output layer's; 2 reduce-scatters per
        # layer + the embedding's
        assert sp["forward_gathers"] == 2 * L + 1
        assert sp["forward_reduce_scatters"] == 2 * L + 1
        assert ("all_reduce", "forward") in sp["kinds"]  # only the loss's three (B, T) ones
        assert {len(line.split()) for line in sp["summary"].splitlines()} == {6}  # readable
        # and, separately, the replicated parameters' gradients summed over the group:
        # 2 LayerNorms (weight + bias) and 2 row-parallel biases per layer, ln_f, the positions
        assert sp["grad_sync_numel"] == L * (4 * C + 2 * C) + 2 * C + CONFIG.block_size * C
        # c_attn and c_fc saved their T/tp tokens: each all-gathers the (B, T, C) input again in
        # backward, in its own phase (Korthikanti et al. 2022, section 4.2.2)
        assert sp["regather"] == [("all_gather", B * T * C)] * (2 * L)
        assert plain["regather"] == []


def _recompute_grads(ctx):
    grads = {}
    idx, targets = _batch()
    for mode in ("none", "selective", "full"):
        torch.manual_seed(0)
        model = apply_tensor_parallel(GPT(CONFIG, recompute=mode), ctx, sequence_parallel=True)
        model(idx, targets)[1].backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters()])
    return {mode: (grads[mode] - grads["none"]).abs().max().item()
            for mode in ("selective", "full")}


def test_recomputation_under_tensor_and_sequence_parallelism_leaves_gradients_unchanged():
    for rank, errors in enumerate(launch(_recompute_grads, tp=2, timeout_s=60)):
        for mode, error in errors.items():
            assert error < 1e-6, f"rank {rank}: {mode} changes gradients by {error:.2e}"


def _odd_sequence(ctx):
    model = apply_tensor_parallel(GPT(CONFIG), ctx, sequence_parallel=True)
    model(torch.zeros(1, 15, dtype=torch.long))


def test_a_sequence_that_does_not_split_is_refused_clearly():
    with pytest.raises(RuntimeError, match="sequence length .*=15 is not divisible by tp size "
                                           "\\(sequence parallelism splits the tokens\\) 2"):
        launch(_odd_sequence, tp=2, timeout_s=30)
