"""The course's notebooks: notebooks/NN_name.ipynb of the repository that holds this package
(a learner's own notebooks beside them, e.g. scratch.ipynb, are not part of the course)."""
from __future__ import annotations

import json
import re
from pathlib import Path

COURSE_NOTEBOOK = re.compile(r"^\d\d_\w+\.ipynb$")


def notebooks_dir() -> Path:
    """The repository's notebooks/ folder, found from this package's path (any working directory)."""
    return Path(__file__).resolve().parents[2] / "notebooks"


def course_notebooks(folder: Path | None = None) -> list[Path]:
    """The course notebooks of `folder` (default: the repository's) in course order."""
    folder = notebooks_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"no notebooks/ folder at {folder}: the course tools run in a clone of "
                         f"the course repository (git clone, then `pip install -e .` there), not "
                         f"from an installed package")
    return sorted(p for p in folder.glob("*.ipynb") if COURSE_NOTEBOOK.match(p.name))


def load_notebook(path: Path, text: str | None = None) -> dict:
    """The notebook at `path` (or its `text`) as JSON, or a SystemExit naming the file, what is
    wrong and how to get a good copy back: not JSON (e.g. half saved), or a cell without source."""
    text = Path(path).read_text(encoding="utf-8") if text is None else text
    fix = f"restore it (`git checkout -- {path}`) or open and save it again in Jupyter"
    try:
        notebook = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not a notebook (not valid JSON: {err.msg}, line {err.lineno}); "
                         f"{fix}") from None
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list):
        raise SystemExit(f"{path}: not a notebook (no list of \"cells\"); {fix}")
    for number, cell in enumerate(cells, 1):
        if not isinstance(cell, dict) or "source" not in cell or "cell_type" not in cell:
            raise SystemExit(f"{path}: cell {number} has no \"source\" or \"cell_type\"; {fix}")
    return notebook


def select(numbers: list[str] | None, folder: Path | None = None) -> list[Path]:
    """The course notebooks whose number ("01") or stem ("01_attention") is listed; all when None."""
    notebooks = course_notebooks(folder)
    if not numbers:
        return notebooks
    chosen = [p for p in notebooks if p.name[:2] in numbers or p.stem in numbers]
    unknown = set(numbers) - {p.name[:2] for p in chosen} - {p.stem for p in chosen}
    if unknown:
        raise SystemExit(f"no course notebook {', '.join(sorted(unknown))}; the notebooks are "
                         f"{', '.join(p.stem for p in notebooks)}")
    return chosen
