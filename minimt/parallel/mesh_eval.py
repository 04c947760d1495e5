"""Evaluation at any layout: a continuation's log-likelihood from a model split over tp x pp.

The last pipeline stage scores with the model's own loss (the vocab-parallel cross entropy when
tp > 1) on targets that leave the context out (IGNORE_INDEX): mean over the continuation's n
tokens, times n, is the sum of their log-probabilities, which every rank then receives.
"""
from __future__ import annotations

import torch

from ..model import IGNORE_INDEX
from .layout import MeshModel


@torch.no_grad()
def mesh_loglikelihoods(model, ctx, contexts: list[list[int]],
                        continuations: list[list[int]]) -> list[float]:
    """The summed log-probability of each continuation given its context (ids), on every rank;
    `model` is the serial GPT (the same weights on every rank), split here by MeshModel. Each
    row is cut to its last block_size + 1 tokens, as minimt.evaluate.score_batch does."""
    mesh = MeshModel(model, ctx, batch_size=1, num_microbatches=1)
    mesh.module.eval()
    block = model.config.block_size
    out = []
    for context, continuation in zip(contexts, continuations, strict=True):
        row = torch.tensor((context + continuation)[-(block + 1):], device=ctx.device)
        targets = row[1:].clone()                                              # (T,)
        targets[:len(targets) - len(continuation)] = IGNORE_INDEX   # score the continuation only
        mean = mesh.global_mean(mesh.loss(row[None, :-1], targets[None]))     # 0-d, every rank
        out.append(-mean.item() * len(continuation))
    return out
