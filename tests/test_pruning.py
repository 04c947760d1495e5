"""Tests for minimt.pruning: exact sparsity per scope, the 2:4 pattern, masks that survive a
fine-tune, and loss against sparsity on a small trained GPT (pruning hurts, fine-tuning helps)."""
import copy

import pytest
import torch

from minimt import GPT, GPTConfig
from minimt.data import TokenDataset
from minimt.pruning import (apply_masks, fine_tune_pruned, layer_sensitivity, magnitude_masks,
                            prunable_weights, sparsity_of, sparsity_sweep, two_four_mask, val_loss)
from minimt.train import Trainer, TrainConfig

TINY = GPTConfig(vocab_size=16, block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return TokenDataset(torch.randint(16, (37,), generator=g).repeat(200), val_fraction=0.1)


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    model = GPT(TINY)
    Trainer(model, data, TrainConfig(max_iters=150, batch_size=8, warmup_iters=10,
                                     learning_rate=3e-3, progress=False)).train(evaluate=False)
    return model


def test_prunable_weights_are_the_block_matmuls():
    names = list(prunable_weights(GPT(TINY)))
    assert len(names) == 4 * TINY.n_layer
    assert all(".h." in n and n.endswith("weight") for n in names)
    assert not any("wte" in n or "ln" in n for n in names)


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_unstructured_sparsity_is_exact(scope, sparsity):
    torch.manual_seed(0)
    model = GPT(TINY)
    apply_masks(model, magnitude_masks(model, sparsity, scope))
    measured = sparsity_of(model)
    assert measured["total"] == pytest.approx(sparsity, abs=1e-3)
    if scope == "layer":
        assert all(v == pytest.approx(sparsity, abs=2e-3) for v in measured.values())


def test_global_pruning_removes_the_smallest_weights_anywhere():
    torch.manual_seed(0)
    model = GPT(TINY)
    weights = prunable_weights(model)
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    threshold = flat.sort().values[int(0.5 * flat.numel())]
    for name, mask in magnitude_masks(model, 0.5, "global").items():
        w = weights[name].detach().abs()
        assert (w[~mask] <= threshold).all() and (w[mask] >= threshold).all()
    # residual projections start smaller (std 0.02/sqrt(2L)), so global pruning hits them harder
    after = copy.deepcopy(model)
    apply_masks(after, magnitude_masks(after, 0.5, "global"))
    s = sparsity_of(after)
    assert s["transformer.h.0.mlp.c_proj.weight"] > s["transformer.h.0.mlp.c_fc.weight"]


def test_two_four_keeps_two_largest_of_every_four():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 1.0, 2.0, -3.0, 0.0]])
    assert two_four_mask(w).tolist() == [[False, True, True, False, False, True, True, False]]
    torch.manual_seed(0)
    model = GPT(TINY)
    for mask in magnitude_masks(model, 0.5, "2:4").values():
        assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()
    with pytest.raises(ValueError, match="divisible by 4"):
        two_four_mask(torch.ones(2, 6))
    with pytest.raises(ValueError, match="50%"):
        magnitude_masks(model, 0.3, "2:4")


def test_bad_arguments_say_what_to_change():
    model = GPT(TINY)
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(model, 0.5, "rows")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        magnitude_masks(model, 1.0)


def test_loss_rises_with_sparsity_and_zero_sparsity_changes_nothing(trained, data):
    sweep = dict(sparsity_sweep(trained, data, [0.0, 0.5, 0.9], batch_size=8))
    assert sweep[0.0] == pytest.approx(val_loss(trained, data, 8, 16))
    assert sweep[0.0] < sweep[0.5] < sweep[0.9]
    assert sweep[0.9] > sweep[0.0] + 0.5  # 90% of the matmul weights gone: clearly worse


def test_layer_sensitivity_names_every_layer(trained, data):
    sens = layer_sensitivity(trained, data, 0.9, batch_size=8, n_batches=4)
    assert set(sens) == set(prunable_weights(trained))
    base = val_loss(trained, data, 8, 16, n_batches=4)
    assert max(sens.values()) > base


def test_fine_tune_keeps_masks_and_recovers_loss(trained, data):
    model = copy.deepcopy(trained)
    masks = magnitude_masks(model, 0.8, "global")
    apply_masks(model, masks)
    pruned_loss = val_loss(model, data, 8, 16)
    fine_tune_pruned(model, masks, data, TrainConfig(max_iters=60, batch_size=8, warmup_iters=5,
                                                     learning_rate=1e-3, progress=False))
    assert sparsity_of(model)["total"] == pytest.approx(0.8, abs=1e-3)
    assert val_loss(model, data, 8, 16) < pruned_loss - 0.1
