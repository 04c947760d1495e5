"""minimt.course: the course itself. Tasks the learner writes in the package, the student copy,
the grader, catch-up for workshops and the rendered site (`python -m minimt.course --help`)."""
from __future__ import annotations

import json
from pathlib import Path

from ..exercises.core import ExerciseError, unfinished


def _task(task_id: str):
    from ..exercises import all_tasks
    tasks = {t.id: t for t in all_tasks()}
    if task_id not in tasks:
        raise ExerciseError(f"no task {task_id!r}; the tasks are {', '.join(tasks)}")
    return tasks[task_id]


def _as_exercise_error(task) -> None:
    """Run a task's check; a stub's NotImplementedError becomes an ExerciseError saying what to
    write, and any other exception from the learner's code one naming the line that raised it."""
    try:
        task.check()
    except NotImplementedError as err:
        raise unfinished(task.id, task.statement, task.target, task.section, str(err)) from None
    except ExerciseError:
        raise
    except Exception as err:
        raise ExerciseError(f"task {task.id}: your code raised {type(err).__name__}: {err}"
                            f"{_where(err, task)}") from None


def _where(err: Exception, task) -> str:
    """' (at minimt/x.py:12: the line)' for the deepest frame in the task's file, if any."""
    import traceback
    path = task.target.partition(":")[0].replace(".", "/") + ".py"
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if f.filename.replace("\\", "/").endswith(path)]
    return f" (at {path}:{frames[-1].lineno}: {frames[-1].line})" if frames else ""


def check(*task_ids: str) -> None:
    """Check tasks ("03.2", ...) against their oracles: one line each when they pass, else an
    ExerciseError naming the case, expected and got, and a hint (shown without a traceback in Jupyter)."""
    for task_id in task_ids:
        _as_exercise_error(_task(task_id))


def require(*task_ids: str) -> None:
    """Stop with a message naming the first of `task_ids` whose region still holds its stub: a
    notebook that runs code written in earlier tasks says so before it fails deep inside."""
    from . import regions
    from .repo import repo_root, task_file, task_of_region
    for task_id in task_ids:
        task = _task(task_id)
        text = (repo_root() / task_file(task)).read_text(encoding="utf-8")
        stub = regions.stub(task, "").strip()
        if any(regions.body(text, r).strip() == stub for r in regions.find_regions(text)
               if task_of_region(task_file(task), r, [task])):
            raise ExerciseError(f"this notebook runs task {task_id}, not written yet: "
                                f"{task.statement} in {task_file(task)}; see {task.section} "
                                f"(minimt.course.check({task_id!r}) checks it)")


def catch_up(task_id: str, pack: str | Path = "catch_up.json", root: str | Path | None = None,
             force: bool = False) -> None:
    """Paste task `task_id`'s solution from a catch-up pack (written by the host with
    `python -m minimt.course pack FILE`) into this copy of the package, so you can go on.
    Your own text in that region is kept in .catch_up/ next to the package; force=True is
    needed to replace it. %autoreload 2 picks the change up in a running notebook."""
    from . import regions
    from .repo import repo_root, task_file, task_of_region
    task = _task(task_id)
    root = Path(root) if root is not None else repo_root()
    pack_path = Path(pack)
    if not pack_path.exists() and not pack_path.is_absolute():
        pack_path = root / pack_path
    if not pack_path.exists():
        raise ExerciseError(f"no catch-up pack at {pack}: ask your host for the file (they write it "
                            f"with `python -m minimt.course pack catch_up.json`)")
    try:
        solved = json.loads(pack_path.read_text(encoding="utf-8"))["tasks"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ExerciseError(f"{pack_path} is not a complete catch-up pack (cut short while it was "
                            f"written or copied?): ask your host for the file again") from None
    if task_id not in solved:
        raise ExerciseError(f"the pack {pack_path.name} holds tasks {', '.join(solved)}, not {task_id}")
    path = root / task_file(task)
    text = path.read_text(encoding="utf-8")
    mine = [r for r in regions.find_regions(text) if task_of_region(task_file(task), r, [task])]
    theirs = solved[task_id]["regions"]
    if [r.qualname for r in mine] != [r["qualname"] for r in theirs]:
        raise ExerciseError(f"{task_file(task)}: the regions of task {task_id} are "
                            f"{[r.qualname for r in mine]}, the pack has "
                            f"{[r['qualname'] for r in theirs]}; restore the markers first")
    untouched = (regions.stub(task, "").strip(), "raise NotImplementedError")
    written = [regions.body(text, r) for r, t in zip(mine, theirs)
               if regions.body(text, r).strip() not in (*untouched, t["body"].strip())]
    if written:
        backup = root / ".catch_up" / f"{task_id}.py"
        backup.parent.mkdir(exist_ok=True)
        backup.write_text("\n\n".join(written) + "\n", encoding="utf-8")
        if not force:
            raise ExerciseError(f"task {task_id} already holds your own code (saved in {backup}); "
                                f"catch_up({task_id!r}, force=True) replaces it")
    path.write_text(regions.replace(text, {r: t["body"] for r, t in zip(mine, theirs)}),
                    encoding="utf-8")
    print(f"task {task_id}: solution pasted into {task_file(task)} ({task.statement})")


__all__ = ["check", "require", "catch_up", "ExerciseError"]
