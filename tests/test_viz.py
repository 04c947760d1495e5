"""Smoke tests for minimt.viz on the Agg backend: every plot has a title, axis labels, a colour bar
and shows the data it was given; bad shapes fail with a message that says what to pass."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minimt.attention import causal_mask, local_mask, sinusoidal_positions  # noqa: E402
from minimt.viz import plot_attention, plot_mask, plot_positions  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def images(fig):
    return [im for ax in fig.axes for im in ax.get_images()]


def data_axes(fig):
    """The axes that hold an image (colour bars are axes too but hold none)."""
    return [ax for ax in fig.axes if ax.get_images()]


def assert_labelled(fig, title):
    texts = [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]
    assert any(title in t for t in texts), f"title {title!r} not found in {texts}"
    for ax in data_axes(fig):
        assert ax.get_xlabel() and ax.get_ylabel(), "every panel needs both axis labels"
    colorbar_labels = [ax.get_ylabel() for ax in fig.axes if not ax.get_images()]
    assert any(colorbar_labels), "a colour bar with a label is expected"


def test_plot_attention_one_panel_per_head():
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(1, 6, 5, 5), dim=-1)  # (B, H, T, T)
    fig = plot_attention(weights, title="six heads")
    assert_labelled(fig, "six heads")
    panels = data_axes(fig)
    assert len(panels) == 6
    assert [ax.get_title() for ax in panels] == [f"head {h}" for h in range(6)]
    np.testing.assert_allclose(panels[2].get_images()[0].get_array(), weights[0, 2].numpy())


def test_plot_attention_single_matrix_with_tokens():
    weights = torch.full((3, 4), 0.25)  # 3 queries (the last 3 tokens) over 4 keys
    tokens = ["a", "b", "c", "d"]
    fig = plot_attention(weights, tokens=tokens, title="one head")
    assert_labelled(fig, "one head")
    (ax,) = data_axes(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "c", "d"]


def test_plot_attention_bad_input_says_what_to_pass():
    with pytest.raises(ValueError, match="plot one sequence"):
        plot_attention(torch.rand(2, 1, 3, 3))
    with pytest.raises(ValueError, match="one token per key"):
        plot_attention(torch.rand(3, 3), tokens=["a", "b"])
    with pytest.raises(ValueError, match="must be"):
        plot_attention(torch.rand(3))
    with pytest.raises(ValueError, match="2 panel_titles for 3 panels"):
        plot_attention(torch.rand(3, 2, 2), panel_titles=["a", "b"])


def test_plot_attention_panel_titles():
    fig = plot_attention(torch.rand(2, 3, 3), panel_titles=["causal", "local"], title="masks")
    assert [ax.get_title() for ax in data_axes(fig)] == ["causal", "local"]


def test_plot_mask_shows_the_mask_and_counts_allowed_pairs():
    mask = local_mask(6, window=2)
    fig = plot_mask(mask[None, None], title="sliding window")
    assert_labelled(fig, "sliding window")
    (ax,) = data_axes(fig)
    assert "11 of 36 pairs allowed" in ax.get_title()  # 6 diagonal + 5 sub-diagonal entries
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), mask.float().numpy())
    with pytest.raises(ValueError, match="2-D"):
        plot_mask(torch.ones(2, 3, 3, dtype=torch.bool))


def test_plot_mask_accepts_numpy():
    fig = plot_mask(causal_mask(4).numpy(), title="causal")
    assert "10 of 16" in data_axes(fig)[0].get_title()


def test_plot_positions():
    pe = sinusoidal_positions(32, 16)
    fig = plot_positions(pe, title="sinusoids")
    assert_labelled(fig, "sinusoids")
    (ax,) = data_axes(fig)
    assert "position" in ax.get_ylabel() and "index" in ax.get_xlabel()
    np.testing.assert_allclose(ax.get_images()[0].get_array(), pe.numpy())
    with pytest.raises(ValueError, match="positions, channels"):
        plot_positions(torch.zeros(2, 3, 4))


def test_show_source_displays_highlighted_package_code(monkeypatch):
    import inspect

    import IPython.display

    from minimt.viz import show_source
    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    show_source(causal_mask, plot_mask)
    assert [obj.data for obj in shown] == [inspect.getsource(causal_mask), inspect.getsource(plot_mask)]
    html = shown[0]._repr_html_()
    assert "def" in html and 'class="k"' in html  # Pygments marks the keyword `def`
