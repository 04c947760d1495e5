"""`python -m minimt.course nbgrader-tags [--check] [NN ...]`: give every course notebook the
nbgrader metadata its cells' content calls for, so that `nbgrader generate_assignment` accepts it.

A cell's role follows from its text alone, so after editing a notebook, rerunning this is all it takes:
- code with a solution region                    -> autograded answer (the learner writes it)
- code calling a checker on a line of its own    -> autograder tests (locked) with points:
  a task's check (`minimt.course.check("03.2")`, `TASKS["03.2"].check()`, or a checker function
  that is a task's `check`) the task's points; `minimt.exercises.check_x(...)` EXERCISE_POINTS
- code holding both is split in two cells: the solution, then the tests
- markdown with a solution region                -> manually graded answer, ANSWER_POINTS
- every other cell                               -> read-only (locked)
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import nbformat

from .notebooks import load_notebook, select

EXERCISE_POINTS = 1   # a warm-up exercise written in a notebook cell
ANSWER_POINTS = 2     # a written "predict, then measure" answer, graded by hand (rubric: the instructor guide)
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
# a checker call at the start of a line (inside try/for it is a demonstration, not a test)
TASK_CHECK = re.compile(r"^(?:\w+\.)*(?:check\(\s*|TASKS\[\s*)[\"'](\d\d\.\d+)[\"']", re.M)
EXERCISE_CHECK = re.compile(r"^(?:\w+\.)*(check_\w+)\(", re.M)
DEFINED = re.compile(r"^def (\w+)\(", re.M)


def task_points() -> dict[str, int]:
    """Points of every task of the course, by id, and by the name of its check function."""
    from ..exercises import all_tasks
    tasks = all_tasks()
    by_checker = {getattr(t.check, "__name__", ""): t for t in tasks}
    return {**{name: t.points for name, t in by_checker.items() if name.startswith("check_")},
            **{t.id: t.points for t in tasks}}


def _regions(cell) -> list[tuple[int, int]]:
    """(begin, end) line numbers of the solution regions; refuses what nbgrader would misread."""
    found, begin = [], None
    for number, line in enumerate(cell.source.split("\n")):
        stripped = line.strip()
        if stripped == BEGIN and begin is None:
            begin = number
        elif stripped == END and begin is not None:
            found.append((begin, number))
            begin = None
        elif "BEGIN SOLUTION" in line or "END SOLUTION" in line:
            raise ValueError(f"cell {cell.get('id')!r}, line {number + 1}: {line.strip()!r}: nbgrader "
                             f"reads any line holding BEGIN or END SOLUTION as a marker; put each "
                             f"marker alone on its own line (or rephrase prose that names them)")
    if begin is not None:
        raise ValueError(f"cell {cell.get('id')!r}: {BEGIN} on line {begin + 1} has no {END}")
    return found


def _tests(source: str, points: dict[str, int]) -> tuple[str, int] | None:
    """(grade id, points) of the checker calls in `source`, or None when it calls none."""
    names, total = [], 0
    for task_id in TASK_CHECK.findall(source):
        if task_id not in points:
            raise ValueError(f"minimt.course.check({task_id!r}): no such task; the tasks are "
                             f"{', '.join(k for k in points if k[:1].isdigit()) or '(none)'}")
        names.append("task_" + task_id.replace(".", "_"))
        total += points[task_id]
    for name in EXERCISE_CHECK.findall(source):
        names.append(name)
        total += points.get(name, EXERCISE_POINTS)   # a task's own check function: its points
    return ("-".join(names), total) if names else None


def _is_check(line: str) -> bool:
    return bool(TASK_CHECK.match(line) or EXERCISE_CHECK.match(line))


def _new_cell(cell, source: str, suffix: str):
    """A copy of `cell` holding `source`, with the id `cell.id + suffix`."""
    new = nbformat.from_dict(dict(cell))
    new.source, new.id = source, f"{cell.id}{suffix}"[:64]
    return new


def _split(cell) -> list:
    """Cells that grade as one unit each: a code cell holding a solution and then checker calls
    becomes solution + tests; a cell of nothing but checker calls, one cell per call (each task
    its own points)."""
    if cell.cell_type != "code":
        return [cell]
    regions, lines = _regions(cell), cell.source.split("\n")
    after = regions[-1][1] + 1 if regions else 0
    first = next((i for i in range(after, len(lines)) if _is_check(lines[i])), None)
    if first is None:
        return [cell]
    head = [_new_cell(cell, "\n".join(lines[:first]).rstrip(), "")] if first else []
    rest = [line for line in lines[first:] if line.strip()]
    if len(rest) > 1 and all(_is_check(line) for line in rest):
        tails = [_new_cell(cell, line, f"-check{i + 1}" if head or i else "")
                 for i, line in enumerate(rest)]
    else:
        tails = [_new_cell(cell, "\n".join(lines[first:]).rstrip(), "-check" if head else "")]
    return head + tails


def _metadata(grade_id: str, solution=False, grade=False, locked=False, points=0) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return meta


def _role(cell, points: dict[str, int]) -> dict:
    """The nbgrader metadata this cell's content calls for."""
    if _regions(cell):
        if cell.cell_type == "markdown":
            return _metadata(cell.id, solution=True, grade=True, points=ANSWER_POINTS)
        defined = DEFINED.findall(cell.source)
        return _metadata(f"solution_{defined[0]}" if defined else cell.id, solution=True)
    tests = _tests(cell.source, points) if cell.cell_type == "code" else None
    if tests:
        return _metadata(tests[0], grade=True, locked=True, points=tests[1])
    return _metadata(cell.id, locked=True)


def tag_notebook(notebook, points: dict[str, int]):
    """The notebook with solution/test cells split and every cell's nbgrader metadata set."""
    cells = [part for cell in notebook.cells for part in _split(cell)]
    seen = set()
    for cell in cells:
        meta = _role(cell, points)
        grade_id, n = meta["grade_id"], 1
        while meta["grade_id"] in seen:                  # e.g. the same checker called twice
            n += 1
            meta["grade_id"] = f"{grade_id}_{n}"
        seen.add(meta["grade_id"])
        cell.metadata["nbgrader"] = meta
    notebook.cells = cells
    return notebook


def tagged_text(path: Path, points: dict[str, int]) -> str:
    """The text the notebook at `path` has once tagged (nbformat's layout, as committed)."""
    load_notebook(path)                                  # a sentence for a broken file
    notebook = nbformat.read(path, as_version=4)
    try:
        return nbformat.writes(tag_notebook(notebook, points)) + "\n"
    except ValueError as err:
        raise SystemExit(f"{path.name}: {err}") from None


def summary(text: str) -> str:
    cells = [c.metadata["nbgrader"] for c in nbformat.reads(text, as_version=4).cells]
    auto = sum(c["points"] for c in cells if c["grade"] and not c["solution"])
    manual = sum(c["points"] for c in cells if c["grade"] and c["solution"])
    return (f"{sum(c['solution'] and not c['grade'] for c in cells)} solution cells, "
            f"{sum(c['grade'] and not c['solution'] for c in cells)} test cells ({auto} points), "
            f"{sum(c['grade'] and c['solution'] for c in cells)} written answers ({manual} points)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimt.course nbgrader-tags",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook numbers (e.g. 03) or stems; default all")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; fail if a notebook is not tagged as its content calls for")
    args = parser.parse_args(argv)
    points, stale = task_points(), []
    for path in select(args.notebooks):
        text = tagged_text(path, points)
        if text != path.read_text(encoding="utf-8"):
            stale.append(path.name)
            if not args.check:
                path.write_text(text, encoding="utf-8")
        print(f"{path.name}: {summary(text)}")
    if args.check and stale:
        print(f"not tagged as their content calls for: {', '.join(stale)}; run "
              f"`python -m minimt.course nbgrader-tags`")
        return 1
    return 0
