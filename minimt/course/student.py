"""`python -m minimt.course student OUT_DIR`: a student copy of the repository, every solution
region replaced by its stub, files marked instructor-only left out, as a fresh git repository."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

from . import regions
from .repo import INSTRUCTOR_ONLY, repo_files, repo_root, task_of_region


def stub_python(path: str, text: str, tasks) -> str:
    """Source with each region's body replaced by its task's stub (a plain stub outside minimt/)."""
    found = regions.find_regions(text)
    replacements = {}
    for region in found:
        task = task_of_region(path, region, tasks)
        if task is None and path.startswith("minimt/"):
            raise ValueError(f"{path}, line {region.begin + 1}: a solution region in "
                             f"{region.qualname or 'module scope'} belongs to no task's target")
        replacements[region] = (regions.stub(task, region.indent) if task else
                                f"{region.indent}raise NotImplementedError")
    return regions.replace(text, replacements)


def stub_notebook(text: str) -> str:
    """Notebook JSON with every code cell's regions replaced by `raise NotImplementedError` and
    outputs cleared."""
    notebook = json.loads(text)
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        found = regions.find_regions(source, python=False)
        if found:
            source = regions.replace(source, {r: f"{r.indent}raise NotImplementedError"
                                              for r in found})
            cell["source"] = source.splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def write_student_copy(out_dir: Path, root: Path | None = None, git: bool = True) -> Path:
    """Write the student copy of the repository at `root` into `out_dir` (new or empty)."""
    from ..exercises import all_tasks
    root = repo_root() if root is None else root
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SystemExit(f"{out_dir} is not empty: choose a new directory for the student copy")
    tasks = all_tasks()
    for rel in repo_files(root):
        source = root / rel
        destination = out_dir / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith((".py", ".ipynb")):
            text = source.read_text(encoding="utf-8")
            if INSTRUCTOR_ONLY in "\n".join(text.splitlines()[:5]):
                continue
            if regions.BEGIN in text:
                text = stub_notebook(text) if rel.endswith(".ipynb") else stub_python(rel, text, tasks)
            destination.write_text(text, encoding="utf-8")
        else:
            shutil.copyfile(source, destination)
        shutil.copymode(source, destination)
    if git and shutil.which("git"):
        identity = ["-c", "user.name=minimt course", "-c", "user.email=course@minimt.invalid"]
        env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull}
        for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "minimt: student copy"]):
            subprocess.run(["git", *identity, *command], cwd=out_dir, check=True, env=env)
    return out_dir


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimt.course student",
                                     description="write a student copy (solutions stubbed)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--no-git", action="store_true", help="do not make it a git repository")
    args = parser.parse_args(argv)
    out = write_student_copy(args.out_dir, git=not args.no_git)
    print(f"student copy written to {out}: {len(all_task_ids())} tasks stubbed")
    return 0


def all_task_ids() -> list[str]:
    from ..exercises import all_tasks
    return [task.id for task in all_tasks()]
