"""Pictures of tensor parallelism and the formulas they are checked against.

- Who holds what: every serial weight element gets its own id, the model is sharded on every rank,
  and the ids each rank keeps say which rank owns which slice (`shard_index_maps` on the ranks,
  `owner_maps` + `plot_weight_owners` in the caller).
- What it costs: Megatron's communication per training step and the parameters each rank stores,
  as closed forms (`comm_bytes_per_step`, `params_per_rank`) beside what was measured
  (`plot_tp_costs`).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap

from ..config import GPTConfig
from ..model import GPT
from .context import ParallelContext
from .tensor import apply_tensor_parallel, padded_vocab_size

REPLICATED = -1  # owner code of an element that every tp rank holds

# the weights of one transformer layer (layer 0) and the embedding, as drawn by plot_weight_owners
LAYER_WEIGHTS = {
    "transformer.wte.weight": "embedding / output layer\nsplit by vocabulary rows",
    "transformer.h.0.attn.c_attn.weight": "attention c_attn [Q|K|V]\ncolumn-parallel, by heads",
    "transformer.h.0.attn.c_proj.weight": "attention c_proj\nrow-parallel",
    "transformer.h.0.mlp.c_fc.weight": "MLP c_fc\ncolumn-parallel",
    "transformer.h.0.mlp.c_proj.weight": "MLP c_proj\nrow-parallel",
}


def comm_bytes_per_step(config: GPTConfig, batch_size: int, tp: int, seq_len: int | None = None,
                        bytes_per_element: int = 4) -> dict[str, int]:
    """Bytes all-reduced per training step on each tp rank (Shoeybi et al. 2019, arXiv 1909.08053).

    forward: 2 all-reduces of (b, s, h) per layer (the g after attention and after the MLP), one
    for the vocab-parallel embedding, 3 of (b, s) in the vocab-parallel loss; backward: 2 per
    layer (the f before attention and before the MLP) and one for the output layer's f.
    """
    if tp == 1:
        return {"forward": 0, "backward": 0}
    s = config.block_size if seq_len is None else seq_len
    bsh, bs, L = batch_size * s * config.n_embd, batch_size * s, config.n_layer
    return {"forward": bytes_per_element * ((2 * L + 1) * bsh + 3 * bs),
            "backward": bytes_per_element * (2 * L + 1) * bsh}


def params_per_rank(config: GPTConfig, tp: int) -> int:
    """Parameters one tp rank stores: the sharded weights / tp plus the replicated ones.

    Sharded per layer: c_attn 3C^2, attention c_proj C^2, c_fc rC^2, MLP c_proj rC^2 (+ the column
    layers' biases 3C + rC); the (padded) embedding V_pad*C. Replicated: positions T*C, the
    LayerNorms and the row-parallel layers' biases (added once, after the all-reduce).
    """
    C, L, r, b = config.n_embd, config.n_layer, config.mlp_ratio, int(config.bias)
    sharded = L * ((4 + 2 * r) * C * C + b * (3 + r) * C) + padded_vocab_size(config.vocab_size, tp) * C
    replicated = config.block_size * C + L * (2 * C * (1 + b) + 2 * b * C) + C * (1 + b)
    return sharded // tp + replicated


def shard_index_maps(ctx: ParallelContext, config: GPTConfig) -> dict[str, torch.Tensor]:
    """On a rank: for each parameter of its tensor-parallel share, the serial position of every
    element it holds (1-based flat index into the serial parameter; 0 marks vocabulary padding).
    Integers up to 2^53 survive float64 exactly."""
    model = GPT(config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.arange(1, p.numel() + 1, dtype=torch.float64).view_as(p))
    apply_tensor_parallel(model, ctx)
    return {name: p.detach().long() for name, p in model.named_parameters()}


def owner_maps(rank_maps: list[dict[str, torch.Tensor]],
               serial_shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Which tp rank holds each serial element: an int array shaped like the serial parameter
    (1-D ones as one row), the rank's number, or REPLICATED when every rank holds it.
    Raises if an element is held by no rank, or by some ranks but not all."""
    owners = {}
    for name, shape in serial_shapes.items():
        numel = int(np.prod(shape))
        holders = np.zeros((len(rank_maps), numel), dtype=bool)  # (tp, numel)
        for rank, maps in enumerate(rank_maps):
            ids = maps[name].flatten()
            holders[rank, (ids[ids > 0] - 1).numpy()] = True
        count = holders.sum(0)                                     # (numel,)
        if not np.all((count == 1) | (count == len(rank_maps))):
            raise ValueError(f"{name}: some elements are held by neither one rank nor all ranks")
        owner = np.where(count == 1, holders.argmax(0), REPLICATED)
        owners[name] = owner.reshape(shape if len(shape) == 2 else (1, numel))
    return owners


def plot_weight_owners(owners: dict[str, np.ndarray], tp: int, names=None,
                       title: str | None = None):
    """One panel per weight, each element coloured by the tp rank that holds it (grey: all)."""
    names = list(LAYER_WEIGHTS) if names is None else names
    colours = ["0.8"] + [plt.get_cmap("tab10")(r) for r in range(tp)]
    cmap = ListedColormap(colours)
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 4.6), layout="constrained")
    for ax, name in zip(np.atleast_1d(axes), names):
        owner = owners[name]
        image = ax.imshow(owner, cmap=cmap, vmin=REPLICATED - 0.5, vmax=tp - 0.5,
                          aspect="auto", interpolation="nearest")
        ax.set_title(f"{LAYER_WEIGHTS.get(name, name)}\n{owner.shape[0]} x {owner.shape[1]}",
                     fontsize=9)
        ax.set_xlabel("input feature (column index)")
        ax.set_ylabel("token id (row index)" if name.endswith("wte.weight")
                      else "output feature (row index)")
    bar = fig.colorbar(image, ax=axes, ticks=range(REPLICATED, tp), fraction=0.03)
    bar.ax.set_yticklabels(["all ranks"] + [f"tp rank {r}" for r in range(tp)])
    fig.suptitle(title or f"Which rank holds which slice of each weight (tp = {tp})")
    return fig


def plot_tp_costs(tps, measured_bytes, formula_bytes, measured_params, formula_params,
                  config_label: str = ""):
    """Two panels against tp: bytes all-reduced per step per rank, parameter memory per rank
    (float32), each measured (markers) beside its formula (line)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(tps, np.asarray(formula_bytes) / 1e6, "-", color="0.6", label="formula")
    left.plot(tps, np.asarray(measured_bytes) / 1e6, "o", label="measured (CommCounter)")
    left.set_title("Communication per training step, per rank")
    left.set_ylabel("all-reduced data (MB per step)")
    right.plot(tps, 4 * np.asarray(formula_params) / 1e6, "-", color="0.6", label="formula")
    right.plot(tps, 4 * np.asarray(measured_params) / 1e6, "o", label="measured (sharded model)")
    right.set_title("Parameter memory per rank (float32)")
    right.set_ylabel("parameters (MB per rank)")
    for ax in (left, right):
        ax.set_xlabel("tensor-parallel size t (ranks)")
        ax.set_xticks(list(tps))
        ax.legend()
    if config_label:
        fig.suptitle(config_label, fontsize=9)
    fig.tight_layout()
    return fig
