"""Plots of pipeline schedules: the timeline (one row per rank), bubble curves and memory bars,
plus an ipywidgets explorer that redraws a schedule's simulated timeline from sliders.

Every function returns its matplotlib Figure; every plot has a title and labelled axes.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .pipeline import SCHEDULES, Timeline, bubble_fraction, pipeline_schedule, simulate

# forward in blues, backward in greens; later chunks of interleaved 1F1B are lighter
_COLOURS = {"F": plt.cm.Blues, "B": plt.cm.Greens}
_LABEL_POINTS = 7  # font size of the micro-batch labels on the bars


def plot_timeline(timeline: Timeline, title: str, unit: str = "time units", ax=None):
    """Gantt chart of a simulated or measured timeline: one bar per action, labelled micro-batch."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(
        figsize=(10, 0.6 * len(timeline.events) + 1.2))
    num_chunks = 1 + max(a.chunk for rank in timeline.events for a, _, _ in rank)
    scale = 1000.0 if unit == "ms" else 1.0  # measured timelines are in seconds
    span = max(end for rank in timeline.events for _, _, end in rank) - timeline.start
    points_per_unit = ax.bbox.width / fig.dpi * 72 / span  # bar length in points per time unit
    for rank, events in enumerate(timeline.events):
        for a, start, end in events:
            shade = 0.75 - 0.35 * a.chunk / max(1, num_chunks - 1) if num_chunks > 1 else 0.6
            ax.barh(rank, (end - start) * scale, left=(start - timeline.start) * scale, height=0.8,
                    color=_COLOURS[a.op](shade), edgecolor="black", linewidth=0.4)
            label = _fitting_label(a, (end - start) * points_per_unit)
            if label:
                ax.text((start + end - 2 * timeline.start) / 2 * scale, rank, label,
                        ha="center", va="center", fontsize=_LABEL_POINTS)
    ax.set_yticks(range(len(timeline.events)), [f"rank {r}" for r in range(len(timeline.events))])
    ax.invert_yaxis()
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("pipeline rank")
    ax.set_title(f"{title}: bubble {timeline.idle_fraction():.1%} of the time\n"
                 f"(blue forward, green backward, lighter = later chunk; "
                 f"label = micro-batch[.chunk] where it fits)")
    return fig


def _fitting_label(action, bar_points: float) -> str:
    """The bar's label, "micro-batch.chunk", else "micro-batch", else "" if even that would spill
    over the bar's neighbours (digits are about 0.6 em wide)."""
    for label in (repr(action).lstrip("FB"), str(action.microbatch)):
        if len(label) * 0.6 * _LABEL_POINTS + 2 <= bar_points:
            return label
    return ""


def plot_bubble_curves(ms, theory: dict, measured: dict | None = None,
                       title: str = "pipeline bubble vs number of micro-batches"):
    """Idle fraction against m: lines for theory, markers for measurement (keys = curve labels)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, values) in enumerate(theory.items()):
        ax.plot(ms, values, "-", color=f"C{i}", label=f"{label} theory")
        if measured and label in measured:
            ax.plot(ms, measured[label], "o", color=f"C{i}", label=f"{label} measured")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.set_xlabel("micro-batches m")
    ax.set_ylabel("bubble (idle fraction of wall time)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_peak_in_flight(peaks: dict, title: str = "activations held at once, per rank"):
    """Grouped bars: for each schedule (key), the peak micro-batches in flight on each rank."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(peaks)
    for i, (label, values) in enumerate(peaks.items()):
        ax.bar(np.arange(len(values)) + i * width, values, width, label=label)
    ranks = range(len(values))
    ax.set_xticks(np.arange(len(values)) + 0.4 - width / 2, [f"rank {r}" for r in ranks])
    ax.set_xlabel("pipeline rank")
    ax.set_ylabel("peak micro-batches in flight")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def draw_schedule(kind: str, num_stages: int, num_microbatches: int, num_chunks: int = 1):
    """Simulate a schedule (F = 1, B = 2 per stage) and plot it with its theoretical bubble."""
    timeline = simulate(pipeline_schedule(kind, num_stages, num_microbatches, num_chunks))
    theory = bubble_fraction(kind, num_stages, num_microbatches, num_chunks)
    return plot_timeline(timeline, f"{kind} p={num_stages} m={num_microbatches} v={num_chunks} "
                                   f"(theory {theory:.1%})")


def schedule_explorer(p: int = 4, m: int = 8, v: int = 2, kind: str = "1f1b"):
    """Sliders for p, m, v and a schedule menu that redraw the simulated timeline (ipywidgets)."""
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()

    def redraw(kind, p, m, v):
        with out:
            out.clear_output(wait=True)
            try:
                draw_schedule(kind, p, m, v if kind == "interleaved" else 1)
                plt.show()
            except ValueError as err:  # e.g. interleaved with m not divisible by p
                print(err)

    menu = widgets.Dropdown(options=SCHEDULES, value=kind)
    v_slider = widgets.IntSlider(value=v, min=1, max=4)

    def show_v_only_when_interleaved(change=None):  # the other schedules have one chunk
        v_slider.layout.display = None if menu.value == "interleaved" else "none"

    show_v_only_when_interleaved()
    menu.observe(show_v_only_when_interleaved, names="value")
    controls = widgets.interactive(
        redraw, kind=menu, p=widgets.IntSlider(value=p, min=1, max=8),
        m=widgets.IntSlider(value=m, min=1, max=16), v=v_slider)
    display(widgets.VBox([controls, out]))
    return controls
