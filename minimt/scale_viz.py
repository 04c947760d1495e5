"""Pictures of the scale calculator: memory per GPU as stacked bars, and an ipywidgets explorer
of a layout (tp, pp, dp, micro-batch, recompute, sequence parallelism, ZeRO-1)."""
from __future__ import annotations

import matplotlib.pyplot as plt

from .scale import GPU_BYTES, RECOMPUTE_MODES, estimate

TERMS = ("weights", "gradients", "optimizer", "activations")
COLORS = ("#4c72b0", "#55a868", "#c44e52", "#8172b2")


def plot_memory_per_gpu(estimates: dict, gpu_bytes: float = GPU_BYTES,
                        title: str = "Memory per GPU of the most loaded pipeline stage", ax=None):
    """Stacked bars (GiB) of weights, gradients, optimizer and activations, one per labelled
    Estimate, with the GPU's memory as a dashed line. Returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 1.5 * len(estimates), 3.6))
    labels = list(estimates)
    bottom = [0.0] * len(labels)
    for term, color in zip(TERMS, COLORS):
        heights = [estimates[k].memory_bytes_per_gpu[term] / 2**30 for k in labels]
        ax.bar(labels, heights, bottom=bottom, label=term, color=color)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.axhline(gpu_bytes / 2**30, color="black", linestyle="--", linewidth=1,
               label=f"GPU memory ({gpu_bytes / 2**30:.0f} GiB)")
    ax.set_title(title)
    ax.set_ylabel("memory per GPU (GiB)")
    ax.set_xlabel("layout")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def scale_explorer(config, global_batch_size: int, achieved_tflops: float | None = None,
                   gpu_bytes: float = GPU_BYTES, tp: int = 8, pp: int = 35, dp: int = 8,
                   micro_batch_size: int = 1):
    """Widgets for tp, pp, dp, micro-batch, recompute, sequence parallelism and ZeRO-1 that
    redraw the estimate's summary and memory bars; a layout that does not divide prints why."""
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()

    def redraw(tp, pp, dp, micro_batch_size, recompute, sequence_parallel, zero):
        with out:
            out.clear_output(wait=True)
            try:
                est = estimate(config, tp, pp, dp, micro_batch_size, global_batch_size,
                               achieved_tflops, recompute, sequence_parallel, zero)
            except ValueError as err:
                print(err)
                return
            print(est.summary(gpu_bytes))
            plot_memory_per_gpu({f"{tp}x{pp}x{dp}": est}, gpu_bytes)
            plt.show()

    def divisors(n, limit=None):
        return [d for d in range(1, (limit or n) + 1) if n % d == 0]

    controls = widgets.interactive(
        redraw,
        tp=widgets.Dropdown(options=divisors(config.n_head, 8), value=tp),
        pp=widgets.Dropdown(options=divisors(config.n_layer), value=pp),
        dp=widgets.IntSlider(value=dp, min=1, max=64),
        micro_batch_size=widgets.Dropdown(options=[1, 2, 4, 8], value=micro_batch_size),
        recompute=widgets.Dropdown(options=RECOMPUTE_MODES, value="full"),
        sequence_parallel=widgets.Checkbox(value=False, description="sequence parallel"),
        zero=widgets.Checkbox(value=False, description="ZeRO-1"))
    display(widgets.VBox([controls, out]))
    return controls
