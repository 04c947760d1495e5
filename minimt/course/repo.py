"""The repository the course runs in: its root, its files, and which task owns a region."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from . import regions

INSTRUCTOR_ONLY = "course: instructor only"  # in a file's first lines: left out of student copies
SKIPPED = {".git", ".venv", "__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".hypothesis",
           ".cache", "checkpoints", ".catch_up"}


def repo_root() -> Path:
    """The directory holding the `minimt` package being imported (this checkout or a student copy)."""
    return Path(__file__).resolve().parents[2]


def course_root(root: Path, command: str) -> Path:
    """`root` when it is a checkout of the course (its minimt/ package beside notebooks/ and
    README.md), else a SystemExit saying so: the course tools read and copy a repository, never
    an installed package's folder (from site-packages that would be everything installed)."""
    root = Path(root)
    missing = [name for name in ("minimt/exercises", "notebooks", "README.md")
               if not (root / name).exists()]
    if missing:
        raise SystemExit(f"{command}: {root} is not a checkout of the course (it has no "
                         f"{', '.join(missing)}); run it from a clone of the course repository "
                         f"(git clone, then `pip install -e .` there), not from an installed package")
    return root


def instructor_repository(root: Path) -> bool:
    """True for the instructor's repository: it holds the instructor guide, which every student
    copy leaves out."""
    guide = Path(root) / "docs" / "instructor.md"
    return guide.is_file() and INSTRUCTOR_ONLY in guide.read_text(encoding="utf-8")[:300]


def graded_package_problem() -> str | None:
    """Why a task check must not run here, or None: nbgrader's autograde (it sets
    NBGRADER_EXECUTION) importing the instructor's complete package instead of the learner's."""
    if os.environ.get("NBGRADER_EXECUTION") != "autograde" or not instructor_repository(repo_root()):
        return None
    return (f"nbgrader is autograding with the instructor's package ({repo_root() / 'minimt'}), not "
            f"the learner's, so this check would grade your own solution: autograde each learner "
            f"with their repository first on the path, `PYTHONPATH=/path/to/their/repository "
            f"nbgrader autograde ASSIGNMENT --student NAME`")


def repo_files(root: Path) -> list[str]:
    """Relative paths of the repository's files: git's view (tracked + untracked, not ignored)
    when it is a git repository, else every file outside caches and virtual environments."""
    if (root / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                                 "-z"], cwd=root, check=True, capture_output=True, text=True)
        return sorted(p for p in listed.stdout.split("\0") if p and (root / p).is_file())
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED and not d.endswith(".egg-info")]
        files += [os.path.relpath(os.path.join(folder, n), root) for n in names
                  if not n.endswith((".pyc", ".pt"))]
    return sorted(files)


def task_of_region(path: str, region: regions.Region, tasks):
    """The task owning `region` of the file at relative `path`, or None."""
    owners = [t for t in tasks if regions.owns(t.target, path, region.qualname)]
    return owners[0] if owners else None


def task_file(task) -> str:
    """The relative path of the file holding a task's regions."""
    return task.target.partition(":")[0].replace(".", "/") + ".py"


def check_output_file(what: str, path: Path, example: str) -> None:
    """Refuse, before any work, a file to write that is a folder or lies in no folder."""
    path = Path(path)
    if path.is_dir():
        raise SystemExit(f"{what} {path} is a folder: give a file name, e.g. {example}")
    if not path.absolute().parent.is_dir():
        raise SystemExit(f"{what} {path}: its folder {path.absolute().parent} does not exist (or "
                         f"is a file); create it first or give a file in an existing folder")
