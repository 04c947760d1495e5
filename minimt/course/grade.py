"""`python -m minimt.course grade [--task ID]`: run every task's check, print a table of points
and the first failure message of each task, then one JSON line with the results."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import textwrap

from ..exercises.core import ExerciseError


def run_task(task) -> tuple[bool, str]:
    """(passed, the check's pass line or its failure message), the check's output captured."""
    from . import _as_exercise_error
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            _as_exercise_error(task)
    except ExerciseError as err:
        return False, str(err)
    except Exception as err:  # a crash in the learner's code is a failure, not the grader's
        return False, f"{type(err).__name__}: {err}"
    return True, out.getvalue().strip().splitlines()[-1] if out.getvalue().strip() else "passed"


def grade(task_ids: list[str] | None = None, width: int = 100) -> dict:
    """Run the checks (all, or those in `task_ids`); print the table; return the JSON record."""
    from ..exercises import all_tasks
    tasks = all_tasks()
    if task_ids:
        known = {t.id for t in tasks}
        unknown = [i for i in task_ids if i not in known]
        if unknown:
            raise SystemExit(f"unknown task {', '.join(unknown)}; tasks: {', '.join(sorted(known))}")
        tasks = [t for t in tasks if t.id in task_ids]
    rows, points = [], 0
    print(f"{'task':<7}{'points':>8}  result")
    for task in tasks:
        passed, message = run_task(task)
        points += task.points if passed else 0
        rows.append({"id": task.id, "points": task.points, "passed": passed})
        earned = f"{task.points if passed else 0}/{task.points}"
        text = "passed" if passed else "FAILED: " + message
        lines = textwrap.wrap(text, width - 17) or [""]
        print(f"{task.id:<7}{earned:>8}  {lines[0]}")
        for line in lines[1:]:
            print(" " * 17 + line)
    max_points = sum(t.points for t in tasks)
    print(f"{'total':<7}{f'{points}/{max_points}':>8}")
    record = {"points": points, "max_points": max_points, "tasks": rows}
    print(json.dumps(record))
    return record


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimt.course grade",
                                     description="run every task's check and print the points")
    parser.add_argument("--task", action="append", metavar="ID", help="run only this task (repeatable)")
    args = parser.parse_args(argv)
    grade(args.task)
    return 0
