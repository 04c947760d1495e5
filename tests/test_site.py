"""The rendered course: `python -m minimt.course site OUT_DIR` executes notebooks and writes an index
and one page per notebook holding its figures as embedded PNG images.

The build is limited to 00 and 01 (the welcome page and a notebook with figures): every notebook
already runs under nbval in the same suite, and executing all of them again would double the
suite's notebook time on CI's 2 cores."""
import re

import nbformat
import pytest

from minimt.course import site
from minimt.course.notebooks import course_notebooks

BUILT = ["00_welcome", "01_attention"]
EMBEDDED_PNG = re.compile(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"')


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    assert site.main([str(out), *[stem[:2] for stem in BUILT]]) == 0
    return out


def test_the_index_links_every_page_and_shows_the_course_map(out_dir):
    index = (out_dir / "index.html").read_text(encoding="utf-8")
    for stem in BUILT:
        assert f'href="{stem}.html"' in index
    assert "The course map" in index and "<table>" in index
    unbuilt = [p.stem for p in course_notebooks() if p.stem not in BUILT]
    assert not any(f'href="{stem}.html"' in index for stem in unbuilt)   # no dead links


def test_every_page_exists_and_holds_its_figures(out_dir):
    for stem in BUILT:
        page = (out_dir / f"{stem}.html").read_text(encoding="utf-8")
        executed = nbformat.read(out_dir / f"{stem}.ipynb", as_version=4)
        figures = sum("image/png" in output.get("data", {}) for cell in executed.cells
                      if cell.cell_type == "code" for output in cell.outputs)
        assert len(EMBEDDED_PNG.findall(page)) == figures, stem
        assert site.title(executed) in page and 'href="index.html"' in page
    assert len(EMBEDDED_PNG.findall((out_dir / "01_attention.html").read_text())) >= 3


def test_an_unknown_notebook_is_refused_with_the_list(tmp_path):
    with pytest.raises(SystemExit, match="no course notebook 42; the notebooks are 00_welcome"):
        site.main([str(tmp_path), "42"])
