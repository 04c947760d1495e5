"""The pictures of notebook 07 are labelled and draw what they are given."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minimt.config import GPTConfig  # noqa: E402
from minimt.parallel import rank_holdings  # noqa: E402
from minimt.parallel.dp_viz import plot_ddp_timeline, plot_mesh  # noqa: E402


def test_ddp_timeline_has_one_bar_per_bucket_and_labelled_axes():
    timeline = {"ready": [0.0, 0.001, 0.002, 0.003],
                "buckets": [(1024, 0.0015, 0.0025), (2048, 0.003, 0.004)]}
    fig = plot_ddp_timeline(timeline, "a timeline")
    ax = fig.axes[0]
    assert len(ax.patches) == 2 and ax.get_title() == "a timeline"
    assert "ms" in ax.get_xlabel()
    plt.close(fig)


def test_mesh_draws_every_held_part_once():
    config = GPTConfig(vocab_size=40, block_size=8, n_layer=4, n_head=4, n_embd=16)
    holdings = rank_holdings(config, tp=2, pp=2, dp=2)
    fig = plot_mesh(holdings, config.n_layer, "mesh")
    ax = fig.axes[0]
    held = sum(len(h["layers"]) + h["embedding"] + h["head"] for h in holdings)
    assert len(ax.patches) == held + 2  # + one dashed frame per replica
    assert ax.get_title() == "mesh" and ax.get_xlabel() and ax.get_ylabel()
    plt.close(fig)
