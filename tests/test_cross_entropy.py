"""Vocabulary-parallel cross entropy on real gloo ranks: Megatron-LM's public unit-test values in
fp32, bf16 and fp16, and a tensor-parallel GPT's loss under bf16 autocast equal to the serial
one."""
import copy
import math

import pytest
import torch

from minimt import GPT, GPTConfig
from minimt.parallel import launch
from minimt.parallel.cross_entropy import vocab_parallel_cross_entropy
from minimt.parallel.tensor import apply_tensor_parallel

# Megatron-LM tests/unit_tests/tensor_parallel/test_cross_entropy.py: tp=4, every rank's slice is
# the logits 0..7 repeated to 32 columns, targets 0, 2, ..., 30; the expected per-token losses are
# 10.2309, 8.2309, 6.2309, 4.2309, repeated (log(16 * sum_j e^j) - target % 8).
MEGATRON_LOSSES = [10.2309, 8.2309, 6.2309, 4.2309] * 4
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _megatron_case(ctx):
    out = {}
    for dtype in DTYPES:
        logits = torch.arange(8.0).repeat(16, 4).to(dtype)[None].requires_grad_()  # (1, 16, 32)
        targets = torch.arange(0, 32, 2)[None]                                        # (1, 16)
        loss = vocab_parallel_cross_entropy(logits, targets, ctx)
        loss.backward()
        out[dtype] = (loss.item(), loss.dtype, logits.grad.dtype)
    return out


def test_megatron_values_in_fp32_and_16_bit():
    exact = math.log(16 * sum(math.exp(j) for j in range(8))) - 3.0   # mean over the targets
    expected = sum(MEGATRON_LOSSES) / len(MEGATRON_LOSSES)
    assert exact == pytest.approx(expected, abs=1e-4)
    for dtype, (loss, loss_dtype, grad_dtype) in launch(_megatron_case, tp=4)[0].items():
        assert loss == pytest.approx(exact, abs=1e-5), f"{dtype}: loss {loss}, exact {exact}"
        assert (loss_dtype, grad_dtype) == (torch.float32, dtype)


CONFIG = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, bias=True)


def _autocast_losses(ctx):
    torch.manual_seed(0)
    serial = GPT(CONFIG)
    model = apply_tensor_parallel(copy.deepcopy(serial), ctx)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, CONFIG.vocab_size, (3, 16), generator=g)
    targets = torch.randint(0, CONFIG.vocab_size, (3, 16), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, serial_loss = serial(idx, targets)
        _, tp_loss = model(idx, targets)
    return serial_loss.item(), tp_loss.item(), tp_loss.dtype


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_loss_under_bf16_autocast_equals_serial(tp):
    """The loss is computed in fp32 from the bf16 logits, as F.cross_entropy does under autocast;
    a bf16 exp-sum-log was 7.5e-3 off here."""
    for rank, (serial, parallel, dtype) in enumerate(launch(_autocast_losses, tp=tp)):
        assert abs(parallel - serial) < 1e-3, f"rank {rank}: tp loss {parallel}, serial {serial}"
        assert dtype == torch.float32
