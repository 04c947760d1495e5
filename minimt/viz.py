"""The plots notebooks share: attention weights, masks and positional encodings; and
`show_source`, which shows package code in a notebook with syntax highlighting.

Every figure has a title, labelled axes (unitless quantities say "index" or "position") and a
colour bar, so a notebook plot reads on its own. Each function returns the matplotlib Figure.
"""
from __future__ import annotations

import inspect
import math

import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap
import numpy as np
import torch


def show_source(*objects) -> None:
    """Display each object's source code, highlighted (IPython's Code): notebooks show the
    package's own code rather than a pasted copy that could drift from it."""
    from IPython.display import Code, display  # IPython comes with Jupyter, not with minimt

    for obj in objects:
        display(Code(inspect.getsource(obj), language="python"))


def _to_numpy(x, name):
    """A float numpy array from a tensor or an array-like, with a clear error otherwise."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.float().numpy() if x.dtype != torch.bool else x.numpy()
    try:
        return np.asarray(x)
    except Exception as err:  # e.g. ragged lists
        raise TypeError(f"{name} must be a tensor or an array, got {type(x).__name__}") from err


def _label_tokens(ax, tokens, n_query, n_key):
    """Tick labels from `tokens` (the keys are the last n_key tokens, the queries the last n_query)."""
    if tokens is None:
        ax.set_xlabel("key position (token index)")
        ax.set_ylabel("query position (token index)")
        return
    tokens = [str(t) for t in tokens]
    if len(tokens) != n_key:
        raise ValueError(f"got {len(tokens)} tokens for {n_key} key positions; pass one token "
                         f"per key (the attention matrix is (queries, keys) = ({n_query}, {n_key}))")
    ax.set_xticks(range(n_key), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(n_query), tokens[n_key - n_query:], fontsize=8)
    ax.set_xlabel("key (token attended to)")
    ax.set_ylabel("query (token attending)")


def plot_attention(weights, tokens=None, title="Attention weights", panel_titles=None,
                   max_cols=4):
    """Heat maps of attention weights, one panel per head.

    weights: (Tq, Tk), (H, Tq, Tk) or (1, H, Tq, Tk) probabilities (each row sums to 1);
    tokens: optional list of Tk token strings for the tick labels; panel_titles: one name per
    panel instead of "head h" (e.g. to compare masks side by side).
    """
    w = _to_numpy(weights, "weights")
    if w.ndim == 4:
        if w.shape[0] != 1:
            raise ValueError(f"weights has batch size {w.shape[0]}; plot one sequence, e.g. "
                             f"weights[0], shape (H, Tq, Tk)")
        w = w[0]
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3:
        raise ValueError(f"weights must be (Tq, Tk), (H, Tq, Tk) or (1, H, Tq, Tk); got shape "
                         f"{w.shape}")
    n_head, n_query, n_key = w.shape
    if panel_titles is None:
        panel_titles = [f"head {h}" for h in range(n_head)] if n_head > 1 else [""]
    if len(panel_titles) != n_head:
        raise ValueError(f"got {len(panel_titles)} panel_titles for {n_head} panels")
    cols = min(n_head, max_cols)
    rows = math.ceil(n_head / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1, 3.0 * rows + 0.6),
                             squeeze=False, constrained_layout=True)
    for h, ax in enumerate(axes.flat):
        if h >= n_head:
            ax.set_visible(False)
            continue
        image = ax.imshow(w[h], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(panel_titles[h])
        _label_tokens(ax, tokens, n_query, n_key)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight (probability)")
    fig.suptitle(title)
    return fig


def plot_mask(mask, title="Attention mask"):
    """A boolean (Tq, Tk) mask as an image: yellow = may attend (True), dark = masked (False)."""
    m = _to_numpy(mask, "mask")
    while m.ndim > 2 and m.shape[0] == 1:  # (1, 1, Tq, Tk) from a broadcastable mask
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (queries, keys), got shape {m.shape}; plot one head, "
                         f"e.g. mask[0, 0]")
    fig, ax = plt.subplots(figsize=(4.4, 3.8), constrained_layout=True)
    two_colours = ListedColormap(["#22223b", "#f2c14e"])  # masked, allowed
    image = ax.imshow(m.astype(float), cmap=two_colours, vmin=-0.5, vmax=1.5, aspect="auto")
    colorbar = fig.colorbar(image, ax=ax, ticks=[0, 1], label="may attend")
    colorbar.ax.set_yticklabels(["no (0)", "yes (1)"])
    ax.set_xlabel("key position (token index)")
    ax.set_ylabel("query position (token index)")
    ax.set_title(f"{title}\n{int(m.sum())} of {m.size} pairs allowed")
    return fig


def plot_positions(pe, title="Sinusoidal positional encodings"):
    """Positional encodings (T, C) as a heat map: a row per position, a column per channel."""
    p = _to_numpy(pe, "pe")
    if p.ndim != 2:
        raise ValueError(f"pe must be (positions, channels), got shape {p.shape}")
    limit = float(np.abs(p).max()) or 1.0
    fig, ax = plt.subplots(figsize=(6.0, 4.0), constrained_layout=True)
    image = ax.imshow(p, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    fig.colorbar(image, ax=ax, label="encoding value (unitless)")
    ax.set_xlabel("channel (index)")
    ax.set_ylabel("position (token index)")
    ax.set_title(title)
    return fig
