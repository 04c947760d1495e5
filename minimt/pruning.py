"""Magnitude pruning: zero the smallest weights, measure what it costs, fine-tune to win some back.

Unstructured pruning keeps the weights of largest |w| (Han et al. 2015, arXiv 1506.02626), either
with one threshold for the whole model ("global") or the same fraction per matrix ("layer").
2:4 structured sparsity keeps the 2 largest of every 4 consecutive weights along the input
dimension, the pattern that Ampere sparse tensor cores run at twice the math rate (Mishra et al.
2021, arXiv 2104.08378). Only the matmul weights of the transformer blocks are pruned; embeddings
(tied with the output layer), LayerNorms and biases stay dense.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .checks import check_number
from .train import Trainer, TrainConfig, batch_losses

SCOPES = ("global", "layer", "2:4")


def check_sparsity(sparsity, name: str = "sparsity") -> float:
    """The fraction of weights to zero: a number in [0, 1) (1 would remove every weight)."""
    return check_number(name, sparsity, 0.0, 1.0, high_open=True,
                        hint=": the fraction of weights set to zero, e.g. 0.5 for half")


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """name -> weight of every nn.Linear inside the transformer blocks (attention and MLP)."""
    weights = {f"{name}.weight": m.weight for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and ".h." in f".{name}"}
    if not weights:
        raise ValueError("no prunable weights: expected nn.Linear layers under transformer.h")
    return weights


def _keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask keeping the (1 - sparsity) fraction of `scores` with the largest values."""
    n_prune = int(round(sparsity * scores.numel()))
    mask = torch.ones(scores.numel(), dtype=torch.bool)
    if n_prune > 0:
        mask[scores.flatten().argsort()[:n_prune]] = False  # ties broken by position: exact count
    return mask.view_as(scores)


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| in every group of 4 consecutive inputs of each output row (50%)."""
    out_features, in_features = weight.shape
    if in_features % 4:
        raise ValueError(f"2:4 sparsity needs in_features divisible by 4, got {in_features}")
    groups = weight.detach().abs().reshape(out_features, in_features // 4, 4)  # (out, in/4, 4)
    top2 = groups.topk(2, dim=-1).indices                                      # (out, in/4, 2)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top2, True)
    return mask.reshape(out_features, in_features)


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """name -> bool mask (True = keep) for every prunable weight.

    scope "global": one threshold over all prunable weights (layers may end up unevenly sparse);
    "layer": each matrix loses the same fraction; "2:4": N:M structured, always 50%.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}: choose one of {SCOPES}")
    check_sparsity(sparsity)
    weights = prunable_weights(model)
    if scope == "2:4":
        if sparsity != 0.5:
            raise ValueError(f"2:4 sparsity is 50% by construction; got sparsity={sparsity}")
        return {name: two_four_mask(w) for name, w in weights.items()}
    if scope == "layer":
        return {name: _keep_largest(w.detach().abs(), sparsity) for name, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])   # (N,)
    keep = _keep_largest(flat, sparsity)
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start:start + w.numel()].view_as(w)
        start += w.numel()
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask)


def sparsity_of(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each prunable weight, and "total" over all of them."""
    weights = prunable_weights(model)
    out = {name: (w == 0).float().mean().item() for name, w in weights.items()}
    zeros = sum((w == 0).sum().item() for w in weights.values())
    out["total"] = zeros / sum(w.numel() for w in weights.values())
    return out


def val_loss(model: nn.Module, data, batch_size: int, block_size: int, n_batches: int = 10,
             seed: int = 0) -> float:
    """Mean validation loss over n_batches fixed batches (same seed, same batches every call)."""
    gen = torch.Generator().manual_seed(seed)
    return batch_losses(model, data.get_batch, "val", n_batches, batch_size, block_size,
                        gen).mean().item()


def sparsity_sweep(model: nn.Module, data, sparsities, scope: str = "global",
                   batch_size: int = 12, n_batches: int = 10) -> list[tuple[float, float]]:
    """(sparsity, validation loss) of a pruned copy of `model` for each sparsity; model untouched."""
    for i, s in enumerate(sparsities):
        check_sparsity(s, f"sparsities[{i}]")
    block = model.config.block_size
    results = []
    for s in sparsities:
        pruned = copy.deepcopy(model)
        apply_masks(pruned, magnitude_masks(pruned, s, scope))
        results.append((s, val_loss(pruned, data, batch_size, block, n_batches)))
    return results


def layer_sensitivity(model: nn.Module, data, sparsity: float = 0.5, batch_size: int = 12,
                      n_batches: int = 10) -> dict[str, float]:
    """Validation loss after pruning one weight matrix alone to `sparsity`: which layer hurts most."""
    check_sparsity(sparsity)
    out = {}
    for name, weight in prunable_weights(model).items():
        pruned = copy.deepcopy(model)
        mask = _keep_largest(weight.detach().abs(), sparsity)
        apply_masks(pruned, {name: mask})
        out[name] = val_loss(pruned, data, batch_size, model.config.block_size, n_batches)
    return out


def fine_tune_pruned(model: nn.Module, masks: dict[str, torch.Tensor], data,
                     config: TrainConfig) -> list[float]:
    """Train `model` for config.max_iters steps, re-applying the masks after every step so the
    pruned weights stay exactly zero; returns the training loss of each step."""
    apply_masks(model, masks)
    trainer = Trainer(model, data, config)
    losses = []
    for _ in range(config.max_iters):
        losses.append(trainer.train_step())
        apply_masks(model, masks)
    return torch.stack(losses).tolist()
