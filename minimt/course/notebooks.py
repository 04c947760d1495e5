"""The course's notebooks: notebooks/NN_name.ipynb of the repository that holds this package
(a learner's own notebooks beside them, e.g. scratch.ipynb, are not part of the course)."""
from __future__ import annotations

import re
from pathlib import Path

COURSE_NOTEBOOK = re.compile(r"^\d\d_\w+\.ipynb$")


def notebooks_dir() -> Path:
    """The repository's notebooks/ folder, found from this package's path (any working directory)."""
    return Path(__file__).resolve().parents[2] / "notebooks"


def course_notebooks(folder: Path | None = None) -> list[Path]:
    """The course notebooks of `folder` (default: the repository's) in course order."""
    folder = notebooks_dir() if folder is None else Path(folder)
    return sorted(p for p in folder.glob("*.ipynb") if COURSE_NOTEBOOK.match(p.name))


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
