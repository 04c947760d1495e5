"""Pipeline plots: one bar per action, titles and labelled axes, the explorer builds its controls."""
import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minimt.parallel.pipeline import pipeline_schedule, simulate  # noqa: E402
from minimt.parallel.pipeline_viz import (draw_schedule, plot_bubble_curves,  # noqa: E402
                                          plot_peak_in_flight, plot_timeline, schedule_explorer)


def labelled(ax):
    return ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_timeline_has_one_bar_per_action_and_states_the_bubble():
    schedule = pipeline_schedule("interleaved", 2, 4, 2)
    fig = plot_timeline(simulate(schedule), "interleaved")
    ax = fig.axes[0]
    assert len(ax.patches) == sum(len(rank) for rank in schedule)  # 2 ranks x 16 actions
    assert labelled(ax) and "bubble 11.1%" in ax.get_title()
    plt.close(fig)
    fig = draw_schedule("gpipe", 4, 8)
    assert "bubble 27.3%" in fig.axes[0].get_title()
    plt.close(fig)


def test_curves_and_bars_are_labelled():
    fig = plot_bubble_curves([1, 2, 4], {"gpipe": [0.5, 0.33, 0.2]}, {"gpipe": [0.52, 0.35, 0.22]})
    assert labelled(fig.axes[0]) and len(fig.axes[0].lines) == 2
    plt.close(fig)
    fig = plot_peak_in_flight({"GPipe": [8, 8], "1F1B": [2, 1]})
    assert labelled(fig.axes[0]) and [p.get_height() for p in fig.axes[0].patches] == [8, 8, 2, 1]
    plt.close(fig)


@pytest.mark.parametrize("kind, p, m, v, labelled", [("interleaved", 4, 8, 2, True),
                                                     ("interleaved", 4, 16, 4, False),
                                                     ("1f1b", 8, 16, 1, True)])
def test_bar_labels_never_overlap(kind, p, m, v, labelled):
    """A label that does not fit its bar is shortened ("3.1" -> "3") or left out."""
    fig = draw_schedule(kind, p, m, v)
    fig.canvas.draw()
    ax = fig.axes[0]
    rows = {}
    for text in ax.texts:
        rows.setdefault(text.get_position()[1], []).append(text.get_window_extent())
    for boxes in rows.values():
        boxes.sort(key=lambda box: box.x0)
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), kind
    assert bool(ax.texts) == labelled
    plt.close(fig)


def test_explorer_shows_v_only_for_the_interleaved_schedule():
    controls = schedule_explorer(p=2, m=4, v=2, kind="1f1b")
    kind, v = controls.children[0], controls.children[3]
    assert v.layout.display == "none"
    kind.value = "interleaved"
    assert v.layout.display is None
    kind.value = "gpipe"
    assert v.layout.display == "none"
    plt.close("all")


def test_explorer_builds_its_four_controls():
    controls = schedule_explorer(p=2, m=4, v=2, kind="interleaved")
    assert [c.description for c in controls.children[:4]] == ["kind", "p", "m", "v"]
    plt.close("all")
