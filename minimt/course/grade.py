"""`python -m minimt.course grade [--task ID] [--timeout S] [--many DIR --out CSV]`: run every task's
check, print a table of points and the first failure message of each task, then one JSON line with
the results (always the last line); exit 1 unless every task passed.

Each check runs in its own process, forked from this one (torch is imported once), on a temporary
copy of the repository, under a time limit: an endless loop, `sys.exit`, `os._exit`, a crash or a
deleted file fails that task with a sentence, and grading goes on with the learner's folder untouched.
"""
from __future__ import annotations

import importlib
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from .repo import course_root, repo_files, repo_root

TIMEOUT_S = 120.0
# libraries the checks import when they run: imported once here, so no forked check pays for them
# (torch._dynamo: launch imports it before forking ranks, ~2 s in each distributed task's check)
PRELOAD = ("torch._dynamo", "transformers.generation.logits_process",
           "transformers.models.gpt2.modeling_gpt2")
MESSAGE_LIMIT = 4000  # characters of a failure message sent back (a pipe holds 64 KiB)


def copy_repository(root: Path, copy: Path) -> dict[str, tuple[int, int]]:
    """Copy the repository's files (git's view: no virtual environment, no caches) to `copy`;
    return (size, mtime) of each, to find later what a check deleted or changed."""
    snapshot = {}
    for rel in repo_files(Path(root)):
        target = copy / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(root) / rel, target)
        stat = target.stat()
        snapshot[rel] = (stat.st_size, stat.st_mtime_ns)
    return snapshot


def damaged(copy: Path, snapshot: dict[str, tuple[int, int]]) -> list[str]:
    """'deleted data/x.txt' / 'changed minimt/y.py' for each file of the copy a check harmed."""
    found = []
    for rel, (size, mtime) in snapshot.items():
        try:
            stat = (copy / rel).stat()
        except OSError:
            found.append(f"deleted {rel}")
            continue
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime):
            found.append(f"changed {rel}")
    return found


def _check_in_child(task_id: str, copy: Path, result_fd: int) -> None:
    """In the forked child: import the package of `copy` (not the parent's), run the task's check,
    write {"passed", "message"} to `result_fd`. The child never returns into the grader's code."""
    result = {"passed": False, "message": f"task {task_id}: the check could not start"}
    try:
        os.setpgid(0, 0)                       # its own process group: a timeout kills its ranks too
        sys.stdout.flush()
        sys.stderr.flush()
        log = os.open(copy / ".grade-output.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)   # input() gets end of file, not a hang
        os.dup2(log, 1)                                # the check's output and its ranks'
        os.dup2(log, 2)
        import faulthandler
        faulthandler.disable()                 # a crash is reported by the parent, in a sentence
        import torch
        torch.set_num_threads(1)               # a forked process with more threads can hang (MEASURED.md)
        for name in [m for m in sys.modules if m == "minimt" or m.startswith("minimt.")]:
            del sys.modules[name]
        sys.path.insert(0, str(copy))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(copy), os.environ.get("PYTHONPATH")) if p)  # ranks started by spawn
        os.chdir(copy)
        importlib.invalidate_caches()
        result = _run_check(task_id)
    except BaseException as err:  # noqa: BLE001 - whatever happens, the parent gets a sentence
        result = {"passed": False, "message": f"task {task_id}: the grader failed in the copy: "
                                              f"{type(err).__name__}: {err}"}
    finally:
        try:
            result["message"] = result["message"][:MESSAGE_LIMIT]
            os.write(result_fd, json.dumps(result).encode())
        finally:
            os._exit(0)


def _run_check(task_id: str) -> dict:
    """Run the check of the copy's task `task_id` in this process; its pass line or failure."""
    import contextlib
    import io
    course = importlib.import_module("minimt.course")
    error = importlib.import_module("minimt.exercises.core").ExerciseError
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            course._as_exercise_error(course._task(task_id))
    except error as err:
        return {"passed": False, "message": str(err)}
    except SystemExit as err:
        return {"passed": False, "message": f"task {task_id}: your code called sys.exit({err.code!r}); "
                                            f"a task's code must return its result, never exit"}
    except BaseException as err:  # noqa: BLE001 - a crash in the learner's code fails the task
        return {"passed": False, "message": f"task {task_id}: {type(err).__name__}: {err}"}
    lines = out.getvalue().strip().splitlines()
    return {"passed": True, "message": lines[-1] if lines else "passed"}


def _read(fd: int) -> bytes:
    """Everything written to the pipe `fd` so far (its writer is gone or silent)."""
    os.set_blocking(fd, False)
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class _RunningCheck:
    """A task's check running in a forked child on its own temporary copy of the repository."""

    def __init__(self, task_id: str, root: Path, timeout_s: float):
        self.task_id, self.timeout_s = task_id, timeout_s
        self.folder = tempfile.TemporaryDirectory(prefix="minimt-grade-", ignore_cleanup_errors=True)
        self.copy = Path(self.folder.name) / "repository"
        self.snapshot = copy_repository(Path(root), self.copy)
        self.read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.read_fd)
            _check_in_child(task_id, self.copy, write_fd)   # never returns
        os.close(write_fd)
        try:
            os.setpgid(self.pid, self.pid)
        except OSError:
            pass                                       # the child did it first, or has exited
        self.deadline = time.monotonic() + timeout_s

    def poll(self) -> tuple[bool, str] | None:
        """(passed, message) once the check has ended or run out of time; None while it runs."""
        done, status = os.waitpid(self.pid, os.WNOHANG)
        if not done and time.monotonic() <= self.deadline:
            return None
        _kill_group(self.pid)                          # its ranks, on a timeout or left behind
        if not done:
            os.waitpid(self.pid, 0)
            status = None
        raw = _read(self.read_fd)
        os.close(self.read_fd)
        harm = damaged(self.copy, self.snapshot)
        self.folder.cleanup()
        return _outcome(self.task_id, status, raw, harm, self.timeout_s)


def run_tasks_isolated(task_ids: list[str], root, timeout_s: float = TIMEOUT_S, jobs: int = 1):
    """Yield (task id, passed, message) for each of `task_ids`, in their order, each checked as
    run_task_isolated checks it, with up to `jobs` checks running at once."""
    pending, running, finished, pause = list(task_ids), {}, {}, 0.002
    try:
        for task_id in task_ids:
            while task_id not in finished:
                while pending and len(running) < jobs:
                    started = pending.pop(0)
                    running[started] = _RunningCheck(started, root, timeout_s)
                ended = {t: r for t, check in running.items() if (r := check.poll()) is not None}
                for t in ended:
                    del running[t]
                finished.update(ended)
                pause = 0.002 if ended else min(pause * 2, 0.05)
                time.sleep(0 if ended else pause)
            yield (task_id, *finished.pop(task_id))
    finally:
        for check in running.values():                 # the caller stopped early: no orphans
            _kill_group(check.pid)
            os.waitpid(check.pid, 0)
            os.close(check.read_fd)
            check.folder.cleanup()


def run_task_isolated(task_id: str, root, timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    """(passed, the check's pass line or a failure sentence) for task `task_id` of the repository
    at `root`, checked in a forked process on a temporary copy of it within `timeout_s` seconds.
    A hang, an exit, a crash or a deleted or changed repository file fails the task; `root` itself
    is never written to, and no process of the check outlives it."""
    (_, passed, message), = run_tasks_isolated([task_id], root, timeout_s)
    return passed, message


def _outcome(task_id: str, status: int | None, raw: bytes, harm: list[str],
             timeout_s: float) -> tuple[bool, str]:
    """(passed, message) from the child's wait status (None: timed out), its result and the harm
    it did to the copy."""
    if status is None:
        return False, (f"task {task_id}: the check did not finish in {timeout_s:g} s (an endless "
                       f"loop?); it was stopped")
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return False, (f"task {task_id}: the check crashed (killed by {name}): your code, or a "
                       f"library it called, ended the process")
    if not raw:
        return False, (f"task {task_id}: the check ended its process (exit status "
                       f"{os.WEXITSTATUS(status)}) before it finished: does your code call "
                       f"sys.exit() or os._exit()? A task's code must return its result")
    try:
        result = json.loads(raw)
    except ValueError:
        return False, (f"task {task_id}: the check's result was garbled (does your code write to "
                       f"file descriptors it did not open?)")
    if harm:
        more = f" and {len(harm) - 3} more" if len(harm) > 3 else ""
        return False, (f"task {task_id}: the check {', '.join(harm[:3])}{more} in the repository; "
                       f"a task's code must not delete or change the course's files (grading ran "
                       f"on a copy: your folder is untouched)")
    return result["passed"], result["message"]


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def preload() -> None:
    """Import the course's tasks and the libraries their checks use into this (parent) process."""
    from ..exercises import all_tasks
    all_tasks()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass                                       # the check that needs it will say so


def print_row(task_id: str, earned: str, text: str, width: int = 100) -> None:
    lines = textwrap.wrap(text, width - 17) or [""]
    print(f"{task_id:<7}{earned:>8}  {lines[0]}")
    for line in lines[1:]:
        print(" " * 17 + line)


def chosen_tasks(task_ids: list[str] | None) -> list:
    """The course's tasks (all, or those in `task_ids`, which must exist)."""
    from ..exercises import all_tasks
    tasks = all_tasks()
    if task_ids:
        known = {t.id for t in tasks}
        unknown = [i for i in task_ids if i not in known]
        if unknown:
            raise SystemExit(f"--task {', '.join(unknown)}: no such task; the tasks are "
                             f"{', '.join(t.id for t in tasks)}")
        tasks = [t for t in tasks if t.id in task_ids]
    return tasks


def grade(task_ids: list[str] | None = None, timeout_s: float = TIMEOUT_S,
          root: Path | None = None, jobs: int = 1) -> dict:
    """Check the tasks (all, or those in `task_ids`) of the repository at `root` (default: the one
    holding this package), each isolated, `jobs` at a time; print the table; return the JSON record."""
    root = course_root(repo_root() if root is None else root, "grade")
    tasks = chosen_tasks(task_ids)
    preload()
    rows, points = [], 0
    print(f"{'task':<7}{'points':>8}  result")
    by_id = {task.id: task for task in tasks}
    for task_id, passed, message in run_tasks_isolated(list(by_id), root, timeout_s, jobs):
        task = by_id[task_id]
        points += task.points if passed else 0
        rows.append({"id": task.id, "points": task.points, "passed": passed})
        print_row(task.id, f"{task.points if passed else 0}/{task.points}",
                  "passed" if passed else "FAILED: " + message)
    max_points = sum(t.points for t in tasks)
    print(f"{'total':<7}{f'{points}/{max_points}':>8}")
    return {"points": points, "max_points": max_points, "tasks": rows}
