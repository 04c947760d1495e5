"""`python -m minimt.course site OUT_DIR [NN ...]`: execute the course notebooks, each in a fresh
kernel, and write a static HTML site for a projector or for reading without Jupyter: index.html
with the course map, and per notebook NN_name.html (outputs and figures embedded) beside the
executed NN_name.ipynb."""
from __future__ import annotations

import argparse
import html
import re
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from nbconvert import HTMLExporter
from nbconvert.filters.markdown import markdown2html

from .notebooks import course_notebooks, load_notebook, select

NAV_STYLE = ("<style>.minimt-nav{font:15px sans-serif;padding:8px 16px;background:#f3f3f3;"
             "border-bottom:1px solid #ccc}.minimt-nav a{margin-right:1.5em}</style>")


def execute(path: Path, timeout: int):
    """The notebook at `path`, run top to bottom in a fresh kernel from an empty folder."""
    load_notebook(path)                                  # a sentence for a broken file
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as folder:
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": folder}})
        try:
            client.execute()
        except CellTimeoutError:
            raise SystemExit(f"{path.name}: a cell ran longer than {timeout} s; on a busy machine "
                             f"give it more with --timeout") from None
        except CellExecutionError as err:
            raise SystemExit(f"{path.name} failed while building the site:\n{err}") from None
    return notebook


def title(notebook) -> str:
    """The notebook's first level-1 heading, e.g. '01 · Attention from the formula'."""
    for cell in notebook.cells:
        found = re.search(r"^# (.+)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if found:
            return found.group(1).strip()
    return "untitled"


def navigation(pages: list[tuple[str, str]], i: int) -> str:
    """A bar of links: the course map, the previous and the next page."""
    links = ['<a href="index.html">course map</a>']
    if i > 0:
        links.append(f'<a href="{pages[i - 1][0]}.html">&larr; {html.escape(pages[i - 1][1])}</a>')
    if i + 1 < len(pages):
        links.append(f'<a href="{pages[i + 1][0]}.html">{html.escape(pages[i + 1][1])} &rarr;</a>')
    return f'{NAV_STYLE}<nav class="minimt-nav">{"".join(links)}</nav>'


def page(notebook, nav: str) -> str:
    """One notebook as a standalone HTML page (figures as embedded PNG) with `nav` on top."""
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(
        notebook, resources={"metadata": {"name": title(notebook)}})
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)


def course_map() -> str:
    """The course map table of 00_welcome, as HTML (empty if that notebook has none)."""
    welcome = [p for p in course_notebooks() if p.name.startswith("00_")]
    cells = nbformat.read(welcome[0], as_version=4).cells if welcome else []
    table = next((c.source for c in cells if c.source.startswith("## The course map")), "")
    return markdown2html(table.split("\n", 1)[1]) if table else ""


def index(pages: list[tuple[str, str]]) -> str:
    """The site's front page: one link per notebook, then the course map."""
    items = "".join(f'<li><a href="{stem}.html">{html.escape(name)}</a></li>' for stem, name in pages)
    table = course_map()
    for stem, _ in pages:
        table = table.replace(f"<code>{stem}</code>", f'<a href="{stem}.html"><code>{stem}</code></a>')
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>minimt: the course</title>'
            f'<style>body{{font:16px sans-serif;max-width:70em;margin:2em auto}}table{{border-collapse:'
            f'collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}</style>'
            f'</head><body><h1>minimt: mini Megatron-Turing</h1><p>Every notebook of the course, '
            f'executed, with its outputs and figures.</p><ol start="0">{items}</ol>'
            f'<h2>The course map</h2>{table}</body></html>\n')


def build(out_dir: Path, numbers: list[str] | None = None, timeout: int = 600) -> list[Path]:
    """Execute the chosen notebooks and write the site into `out_dir`; returns the pages written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SystemExit(f"site {out_dir}: that is a file, not a folder; give a folder to write "
                         f"the site into, e.g. site/")
    chosen = select(numbers)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = []
    for path in chosen:
        start = time.perf_counter()
        executed.append((path.stem, execute(path, timeout)))
        nbformat.write(executed[-1][1], out_dir / path.name)
        print(f"executed {path.name} in {time.perf_counter() - start:.0f} s")
    pages = [(stem, title(notebook)) for stem, notebook in executed]
    written = [out_dir / "index.html"]
    written[0].write_text(index(pages), encoding="utf-8")
    for i, (stem, notebook) in enumerate(executed):
        written.append(out_dir / f"{stem}.html")
        written[-1].write_text(page(notebook, navigation(pages, i)), encoding="utf-8")
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimt.course site", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the site into")
    parser.add_argument("notebooks", nargs="*", help="notebook numbers (e.g. 01 04) or stems; default all")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default 600)")
    args = parser.parse_args(argv)
    if args.timeout < 1:
        parser.error(f"--timeout {args.timeout}: give the seconds one cell may run, 1 or more "
                     f"(default 600)")
    for path in build(args.out_dir, args.notebooks, args.timeout):
        print(f"wrote {path}")
    return 0
