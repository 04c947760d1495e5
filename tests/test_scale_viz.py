"""The calculator's pictures: labelled stacked bars in GiB, and an explorer that redraws."""
import matplotlib

matplotlib.use("Agg")

from minimt import GPTConfig  # noqa: E402
from minimt.scale import estimate  # noqa: E402
from minimt.scale_viz import plot_memory_per_gpu, scale_explorer  # noqa: E402

MT_NLG = GPTConfig.from_preset("mt-nlg-530b")


def test_bars_stack_the_four_terms_in_gib():
    est = estimate(MT_NLG, 8, 35, 8, 1, 1920)
    ax = plot_memory_per_gpu({"8x35x8": est})
    assert ax.get_title() and "GiB" in ax.get_ylabel() and ax.get_xlabel()
    top = max(p.get_y() + p.get_height() for p in ax.patches)
    assert abs(top - est.memory_bytes_per_gpu["total"] / 2**30) < 1e-9


def test_explorer_redraws_and_explains_a_layout_that_does_not_divide(capsys):
    controls = scale_explorer(MT_NLG, 1920, achieved_tflops=126)
    assert [c.description for c in controls.children[:3]] == ["tp", "pp", "dp"]
    capsys.readouterr()
    controls.children[1].value = 15  # 105 / 15 = 7 layers per stage: divides, redraws
    assert "tp=8 pp=15 dp=8 (960 GPUs)" in capsys.readouterr().out
    controls.children[2].value = 7   # 1920 is not divisible by dp x micro-batch = 7
    assert "global_batch_size=1920 is not divisible by dp x micro_batch_size=7" in \
        capsys.readouterr().out
