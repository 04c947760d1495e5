"""`python -m minimt.course student OUT_DIR`: a student copy of the repository, every solution
region replaced by its stub, files marked instructor-only left out, as a fresh git repository."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import regions
from .notebooks import load_notebook
from .repo import INSTRUCTOR_ONLY, course_root, repo_files, repo_root, task_of_region


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


INSTRUCTOR_ONLY_MARK = "pytest.mark.instructor_only"


def drop_instructor_only_tests(text: str) -> str:
    """Test source without the top-level tests decorated @pytest.mark.instructor_only (they hold
    model answers to the exercises)."""
    import ast
    lines = text.splitlines(keepends=True)
    spans = [(min(d.lineno for d in node.decorator_list) - 1, node.end_lineno)
             for node in ast.parse(text).body if isinstance(node, ast.FunctionDef)
             and any(ast.unparse(d) == INSTRUCTOR_ONLY_MARK for d in node.decorator_list)]
    for begin, end in sorted(spans, reverse=True):
        del lines[begin:end]
    return "".join(lines)


ANSWER_STUB = "YOUR ANSWER HERE"  # nbgrader's text for a written answer still to write


def stub_notebook(text: str, path: str = "notebook") -> str:
    """Notebook JSON with every region replaced by its stub (code: `raise NotImplementedError`;
    a written answer in markdown: nbgrader's "YOUR ANSWER HERE") and outputs cleared."""
    notebook = load_notebook(path, text)
    for cell in notebook["cells"]:
        if cell["cell_type"] not in ("code", "markdown"):
            continue
        source = "".join(cell["source"])
        found = regions.find_regions(source, python=False)
        if found:
            stub = "raise NotImplementedError" if cell["cell_type"] == "code" else ANSWER_STUB
            source = regions.replace(source, {r: f"{r.indent}{stub}" for r in found})
            cell["source"] = source.splitlines(keepends=True)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


INSTRUCTOR_README = "This repository is the instructor's version: the package is complete."
STUDENT_README = ("This is a student copy: the package is complete except for the tasks below, "
                  "which are yours to write.")
INSTRUCTOR_SPAN = re.compile(r"<!-- course: instructor only, begin -->\n.*?"
                             r"<!-- course: instructor only, end -->\n", re.S)
STUDENT_GUIDES = ("- **Instructors and workshop hosts**: the instructor guide (rubric, answers to the\n"
                  "  discussion questions) and the workshop plan ship with the instructor's repository\n"
                  "  only, not with this student copy.\n")


def student_readme(text: str) -> str:
    """The README of a student copy: says it is one, and names the instructor-only guides (left
    out of the copy) without linking to them."""
    return INSTRUCTOR_SPAN.sub(STUDENT_GUIDES, text.replace(INSTRUCTOR_README, STUDENT_README))


def instructor_only(text: str) -> bool:
    """True when the file's first lines mark it as left out of student copies."""
    return INSTRUCTOR_ONLY in "\n".join(text.splitlines()[:5])


def checked_out_dir(out_dir: Path, root: Path) -> Path:
    """`out_dir` when a student copy may be written there, else a SystemExit saying what to give."""
    out_dir = Path(out_dir)
    example = root.resolve().parent / "minimt-student"
    if out_dir.exists() and not out_dir.is_dir():
        raise SystemExit(f"student {out_dir}: that is a file; give a new folder for the student "
                         f"copy, e.g. {example}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SystemExit(f"student {out_dir}: that folder is not empty; give a new folder for the "
                         f"student copy, e.g. {example}")
    if out_dir.resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"student {out_dir}: that is inside the instructor's repository {root} "
                         f"(the copy's files would join it, solutions and stubs mixed); give a "
                         f"folder outside it, e.g. {example}")
    return out_dir


def write_student_copy(out_dir: Path, root: Path | None = None, git: bool = True) -> Path:
    """Write the student copy of the repository at `root` into `out_dir` (new or empty); on any
    failure nothing is left there."""
    root = course_root(repo_root() if root is None else root, "student")
    out_dir = checked_out_dir(out_dir, root)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        _write_copy(partial, root, git)
        if out_dir.exists():
            out_dir.rmdir()                               # empty, checked above
        partial.rename(out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def _write_copy(out_dir: Path, root: Path, git: bool) -> None:
    from ..exercises import all_tasks
    tasks = all_tasks()
    for rel in repo_files(root):
        source = root / rel
        destination = out_dir / rel
        if rel.endswith((".py", ".ipynb", ".md")) and instructor_only(
                source.read_text(encoding="utf-8")):
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith((".py", ".ipynb")):
            text = source.read_text(encoding="utf-8")
            if rel.endswith(".ipynb"):
                load_notebook(rel, text)                  # a broken notebook is named, not copied
            if regions.BEGIN in text:
                text = (stub_notebook(text, rel) if rel.endswith(".ipynb") else
                        stub_python(rel, text, tasks))
            if rel.endswith(".py") and INSTRUCTOR_ONLY_MARK in text:
                text = drop_instructor_only_tests(text)
            destination.write_text(text, encoding="utf-8")
        elif rel == "README.md":
            destination.write_text(student_readme(source.read_text(encoding="utf-8")),
                                   encoding="utf-8")
        else:
            shutil.copyfile(source, destination)
        shutil.copymode(source, destination)
    if git and shutil.which("git"):
        identity = ["-c", "user.name=minimt course", "-c", "user.email=course@minimt.invalid"]
        env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull}
        for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "minimt: student copy"]):
            subprocess.run(["git", *identity, *command], cwd=out_dir, check=True, env=env)


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


def _code(line: str) -> str:
    """A line's code without its indentation and trailing comment."""
    return line.split("  #")[0].strip()


def _outside_regions(root: Path) -> set[str]:
    """Code lines of the package (checkers and course tools aside) outside any region: idioms
    such as `with torch.no_grad():` that a solution shares with ordinary code."""
    lines = set()
    for rel in repo_files(root):
        if rel.startswith("minimt/") and rel.endswith(".py") and not rel.startswith(
                ("minimt/exercises/", "minimt/course/")):
            text = (root / rel).read_text(encoding="utf-8")
            inside = {i for r in regions.find_regions(text) for i in range(r.begin, r.end + 1)}
            lines |= {_code(line) for i, line in enumerate(text.splitlines()) if i not in inside}
    return lines


def solution_lines(root: Path | None = None, min_length: int = 20) -> dict[str, str]:
    """The distinctive lines of every solution region of the repository at `root` (package code,
    notebook code and the written answers of markdown cells), each mapped to where it comes from; short lines, and lines the package also
    has outside any region, are left out."""
    root = repo_root() if root is None else root
    generic = _outside_regions(root)
    found = {}
    for rel in repo_files(root):
        if not rel.endswith((".py", ".ipynb")):
            continue
        text = (root / rel).read_text(encoding="utf-8")
        if regions.BEGIN not in text:
            continue
        sources = ([("".join(c["source"]), False) for c in load_notebook(rel, text)["cells"]
                    if c["cell_type"] in ("code", "markdown")]  # markdown: written answers
                   if rel.endswith(".ipynb") else [(text, True)])
        for source, python in sources:
            for region in regions.find_regions(source, python):
                for line in regions.body(source, region).splitlines():
                    code = _code(line)
                    if len(code) >= min_length and not code.startswith("#") and code not in generic:
                        found[code] = f"{rel}: {region.qualname or 'a notebook cell'}"
    return found


def find_leaks(copy: Path, lines: dict[str, str], long_line: int = 40) -> list[str]:
    """'file:line: text (solution of ...)' for each place in the copy that repeats solution code:
    two consecutive solution lines, or one of at least `long_line` characters."""
    leaks = []
    for rel in repo_files(Path(copy)):
        try:
            text = (Path(copy) / rel).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if rel.endswith(".ipynb"):
            text = "\n".join("".join(c["source"]) for c in load_notebook(rel, text)["cells"])
        codes = [_code(line) for line in text.splitlines()]
        hits = [code in lines for code in codes]
        for i, code in enumerate(codes):
            paired = (i > 0 and hits[i - 1]) or (i + 1 < len(hits) and hits[i + 1])
            if hits[i] and (paired or len(code) >= long_line):
                leaks.append(f"{rel}:{i + 1}: {code} (solution of {lines[code]})")
    return leaks
