"""Strict task mode, for the nbval run of the instructor's notebooks (MINIMT_STRICT_TASKS=1): a
notebook may enter a task's solution region only when its first cell's `require(...)` names the
task or the notebook has already checked it (`minimt.course.check(id)`, right after the section
that teaches it). Entering any other region raises the NotImplementedError a student copy's stub
would raise there, so a notebook that passes under nbval also runs in a copy in which only those
tasks are written. Each function holding a region gets a guard call on its `### BEGIN` line (same
line numbers, no cost elsewhere); ranks forked later inherit the guards and the allowed set."""
from __future__ import annotations

import importlib
import inspect
import os
import sys

ENV = "MINIMT_STRICT_TASKS"
_allowed: set[str] = set()
_tasks: dict[str, object] = {}  # the guarded tasks, by id; empty until start()


def allow(*task_ids: str) -> None:
    """Let the notebook run these tasks' regions from now on (check() calls it)."""
    _allowed.update(task_ids)


def enter(task_id: str) -> None:
    """The guard on a region's first line: refuse a task the notebook has not declared."""
    if task_id not in _allowed:
        task = _tasks[task_id]
        raise NotImplementedError(
            f"task {task_id}: {task.statement}; see {task.section} (strict mode: this notebook "
            f"runs it, but its first cell's require(...) does not name it and it has not "
            f"checked it yet)")


def start(declared: tuple[str, ...]) -> None:
    """Guard every task region when MINIMT_STRICT_TASKS=1 in an IPython kernel (require() calls it;
    a plain interpreter, e.g. a test calling require, is never guarded)."""
    if os.environ.get(ENV) != "1" or "IPython" not in sys.modules:
        return
    from IPython import get_ipython
    if get_ipython() is None:
        return
    allow(*declared)
    if not _tasks:
        _guard_all()


def _guard_all() -> None:
    from ..exercises import all_tasks
    from . import regions
    from .repo import repo_root, task_file, task_of_region
    tasks = all_tasks()
    _tasks.update((t.id, t) for t in tasks)
    for path in sorted({task_file(t) for t in tasks}):
        source = (repo_root() / path).read_text(encoding="utf-8")
        lines = source.splitlines()
        outer = set()
        for region in regions.find_regions(source):
            task = task_of_region(path, region, tasks)
            lines[region.begin] = (f'{region.indent}__import__("minimt.course.strict", fromlist=['
                                   f'"enter"]).enter("{task.id}")  {regions.BEGIN}')
            outer.add(region.qualname)
        module = importlib.import_module(path[:-3].replace("/", "."))
        code = compile("\n".join(lines) + "\n", module.__file__, "exec")
        for qualname in outer:
            function, name = _function(module, qualname)
            function.__code__ = _find_code(code, name)


def _function(module, qualname: str):
    """(function object, its qualname) of the outermost function of `qualname` reachable by
    attribute (a helper nested in a function is guarded through the function that holds it)."""
    obj, found = module, []
    for part in qualname.split("."):
        if not hasattr(obj, part) or (found and callable(obj) and not isinstance(obj, type)):
            break
        obj = inspect.unwrap(getattr(getattr(obj, part), "__func__", getattr(obj, part)))
        found.append(part)
    return obj, ".".join(found)


def _find_code(code, qualname: str):
    for const in code.co_consts:
        if hasattr(const, "co_qualname"):
            if const.co_qualname == qualname:
                return const
            inner = _find_code(const, qualname)
            if inner is not None:
                return inner
    return None
