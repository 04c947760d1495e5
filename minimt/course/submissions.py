"""`python -m minimt.course grade --many SUBMISSIONS_DIR --out grades.csv`: grade a folder of learner
repositories (one sub-folder each) into one table, for instructors without nbgrader.

Only the learners' solution regions are graded: each submission's task bodies are pasted into a
copy of this (the instructor's) repository, so a learner who edited a checker, a test or another
part of the package changes nothing but their own tasks. Each task is then checked isolated
(`grade.run_tasks_isolated`)."""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path

from . import regions
from .grade import chosen_tasks, copy_repository, preload, print_row, run_tasks_isolated
from .repo import check_output_file, course_root, repo_root, task_file, task_of_region

COLUMNS = ["learner", "task", "points", "max_points", "first_failure"]


def paste_submission(submission: Path, tree: Path, tasks) -> dict[str, str]:
    """Paste the submission's region bodies of `tasks` into the repository copy `tree`; return
    {task id: why it cannot be graded} for tasks whose file or markers are missing or changed."""
    problems = {}
    for path in sorted({task_file(t) for t in tasks}):
        in_file = [t for t in tasks if task_file(t) == path]
        theirs_path = submission / path
        if not theirs_path.is_file():
            problems.update({t.id: f"task {t.id}: {path} is missing from the submission"
                             for t in in_file})
            continue
        ours_text = (tree / path).read_text(encoding="utf-8")
        try:
            theirs_text = theirs_path.read_text(encoding="utf-8")
            theirs_regions = regions.find_regions(theirs_text)
        except (UnicodeDecodeError, ValueError, SyntaxError) as err:
            problems.update({t.id: f"task {t.id}: {path} of the submission cannot be read: {err}"
                             for t in in_file})
            continue
        replacements = {}
        for task in in_file:
            ours = [r for r in regions.find_regions(ours_text) if task_of_region(path, r, [task])]
            mine = [r for r in theirs_regions if task_of_region(path, r, [task])]
            if [r.qualname for r in mine] != [r.qualname for r in ours]:
                problems[task.id] = (f"task {task.id}: {path} of the submission has the solution "
                                     f"markers of {[r.qualname for r in mine] or 'no function'}, "
                                     f"not {[r.qualname for r in ours]}: restore "
                                     f"### BEGIN SOLUTION / ### END SOLUTION around the body")
                continue
            replacements.update({r: regions.body(theirs_text, m) for r, m in zip(ours, mine)})
        (tree / path).write_text(regions.replace(ours_text, replacements), encoding="utf-8")
    return problems


def not_a_course(folder: Path) -> str | None:
    """Why `folder` is not a learner's course repository, or None when it is one."""
    if not (folder / "minimt").is_dir():
        return (f"not a course repository: {folder.name}/ has no minimt/ package (hand in the "
                f"whole student copy, the folder holding minimt/ and notebooks/)")
    return None


def grade_learner(submission: Path, root: Path, tasks, timeout_s: float, jobs: int = 1) -> list[dict]:
    """One row per task (and a total) for the learner repository `submission`."""
    learner = submission.name
    reason = not_a_course(submission)
    max_points = sum(t.points for t in tasks)
    if reason:
        print_row(learner, f"0/{max_points}", reason)
        return [{"learner": learner, "task": "", "points": 0, "max_points": max_points,
                 "first_failure": reason}]
    rows = []
    with tempfile.TemporaryDirectory(prefix="minimt-submission-", ignore_cleanup_errors=True) as tmp:
        tree = Path(tmp) / "repository"
        copy_repository(root, tree)
        problems = paste_submission(submission, tree, tasks)
        checked = {task_id: (passed, message) for task_id, passed, message in run_tasks_isolated(
            [t.id for t in tasks if t.id not in problems], tree, timeout_s, jobs)}
        for task in tasks:
            passed, message = (False, problems[task.id]) if task.id in problems else checked[task.id]
            rows.append({"learner": learner, "task": task.id, "points": task.points if passed else 0,
                         "max_points": task.points, "first_failure": "" if passed else message})
    total = sum(r["points"] for r in rows)
    print_row(learner, f"{total}/{max_points}",
              next((r["first_failure"] for r in rows if r["first_failure"]), "every task passed"))
    return rows + [{"learner": learner, "task": "total", "points": total, "max_points": max_points,
                    "first_failure": ""}]


def grade_many(folder: Path, out: Path | None, task_ids: list[str] | None = None,
               timeout_s: float = 120.0, jobs: int = 1) -> dict:
    """Grade every sub-folder of `folder`; write the table to `out` (CSV); return the JSON record."""
    folder = Path(folder)
    if out is None:
        raise SystemExit("--many needs --out FILE.csv: the table of learners, tasks and points")
    check_output_file("--out", out, "--out grades.csv")
    if not folder.is_dir():
        raise SystemExit(f"--many {folder}: no such folder; give the folder holding one "
                         f"sub-folder per learner")
    submissions = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not submissions:
        raise SystemExit(f"--many {folder}: no sub-folders in it; put each learner's repository "
                         f"in a folder of its own (named after the learner)")
    root = course_root(repo_root(), "grade --many")
    tasks = chosen_tasks(task_ids)
    preload()
    print(f"{'learner':<7}{'points':>8}  first failure")
    rows = [row for submission in submissions
            for row in grade_learner(submission, root, tasks, timeout_s, jobs)]
    partial = Path(out).with_name(Path(out).name + ".partial")
    with open(partial, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(out)
    totals = {r["learner"]: {"points": r["points"], "max_points": r["max_points"]}
              for r in rows if r["task"] in ("total", "")}
    print(f"wrote {out}: {len(submissions)} learners, {len(tasks)} tasks")
    return {"out": str(out), "learners": totals,
            "passed": all(not r["first_failure"] for r in rows)}
