"""Pictures for notebook 07: the backward / all-reduce timeline of DistributedDataParallel, and
which rank of a (dp, pp, tp) mesh holds which layers and which slices."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle


def plot_ddp_timeline(timeline: dict, title: str, start: float | None = None, ax=None):
    """Gradient-ready times (ticks) and each bucket's all-reduce (a bar from launch to done), in
    ms from `start` (default: the first gradient ready)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 2.6))
    origin = min(timeline["ready"]) if start is None else start
    ready = [1e3 * (t - origin) for t in timeline["ready"]]
    ax.vlines(ready, 1.6, 2.4, color="tab:blue", lw=1)
    for i, (nbytes, launch, done) in enumerate(timeline["buckets"]):
        left, width = 1e3 * (launch - origin), 1e3 * (done - launch)
        ax.barh(1 - 0.3 * (i % 2), max(width, 0.02), left=left, height=0.25, color="tab:orange",
                edgecolor="black")
        ax.text(left, 1.2 - 0.3 * (i % 2), f"b{i} {nbytes / 1024:.0f} KiB", fontsize=7)
    ax.axvline(max(ready), color="tab:blue", ls="--", lw=1)
    ax.set_yticks([0.85, 2.0], ["all-reduce\n(buckets)", "backward\n(grad ready)"])
    ax.set_xlabel("time since the first gradient was ready (ms)")
    ax.set_ylim(0.4, 2.6)
    ax.set_title(title)
    return ax.figure


def plot_mesh(holdings: list[dict], n_layer: int, title: str):
    """One column per global rank: the blocks it holds (rows), shaded by pipeline stage, with its
    tensor-parallel slice (heads, vocabulary rows) written inside; data-parallel replicas framed."""
    world = len(holdings)
    fig, ax = plt.subplots(figsize=(1.3 * world + 1, 0.45 * (n_layer + 2) + 1))
    colors = plt.get_cmap("tab10")
    rows = ["embedding"] + [f"block {i}" for i in range(n_layer)] + ["ln_f + head"]
    for h in holdings:
        x = h["rank"]
        held = [h["embedding"]] + [i in h["layers"] for i in range(n_layer)] + [h["head"]]
        for y, has in enumerate(held):
            if has:
                ax.add_patch(Rectangle((x + 0.05, y + 0.05), 0.9, 0.9, color=colors(h["pp"]), alpha=0.6))
                label = (f"vocab {h['vocab'].start}-{h['vocab'].stop - 1}" if y in (0, len(held) - 1)
                         else f"heads {h['heads'].start}-{h['heads'].stop - 1}")
                ax.text(x + 0.5, y + 0.5, label, ha="center", va="center", fontsize=7)
    replicas = max(h["dp"] for h in holdings) + 1
    per_replica = world // replicas
    for d in range(replicas):
        ax.add_patch(Rectangle((d * per_replica, -0.1), per_replica, len(rows) + 0.2, fill=False,
                               lw=2, ls="--", edgecolor="black"))
    ax.set_xlim(0, world)
    ax.set_ylim(len(rows) + 0.2, -0.2)
    ax.set_xticks([h["rank"] + 0.5 for h in holdings],
                  [f"rank {h['rank']}\ndp{h['dp']} pp{h['pp']} tp{h['tp']}" for h in holdings],
                  fontsize=7)
    ax.set_yticks([y + 0.5 for y in range(len(rows))], rows)
    ax.set_xlabel("global rank (Megatron's order: tensor-parallel ranks adjacent); dashed: a replica")
    ax.set_ylabel("part of the model")
    ax.set_title(title)
    fig.tight_layout()
    return fig
