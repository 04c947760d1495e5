"""`python -m minimt.course pack FILE [--task ID]`: write a catch-up pack from this (instructor)
repository: the solution regions of the chosen tasks, for `minimt.course.catch_up` in a student copy."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import regions
from .repo import check_output_file, repo_root, task_file, task_of_region


def task_regions(task, root: Path) -> list[dict]:
    """[{"qualname", "body"}] of the task's regions in the file at `root`."""
    path = task_file(task)
    text = (root / path).read_text(encoding="utf-8")
    return [{"qualname": r.qualname, "body": regions.body(text, r)}
            for r in regions.find_regions(text) if task_of_region(path, r, [task]) is task]


def write_pack(path: Path, task_ids: list[str] | None = None, root: Path | None = None) -> dict:
    """Write the pack for `task_ids` (default: every task) and return it."""
    from ..exercises import all_tasks
    root = repo_root() if root is None else root
    tasks = [t for t in all_tasks() if not task_ids or t.id in task_ids]
    pack = {"format": 1, "tasks": {}}
    for task in tasks:
        found = task_regions(task, root)
        if any(regions.stub(task, "").strip() in r["body"] for r in found):
            raise SystemExit(f"task {task.id} is still a stub here: write packs from the "
                             f"instructor's repository")
        pack["tasks"][task.id] = {"file": task_file(task), "regions": found}
    partial = Path(path).with_name(Path(path).name + ".partial")  # never a half-written pack
    partial.write_text(json.dumps(pack, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)
    return pack


def notebook_tasks(task_ids: list[str] | None, notebooks: list[str] | None) -> list[str] | None:
    """The task ids named by --task and --notebook (None: every task)."""
    if not notebooks:
        return task_ids
    from ..exercises import all_tasks
    chosen = [t.id for t in all_tasks() if t.id[:2] in notebooks]
    empty = [n for n in notebooks if not any(i[:2] == n for i in chosen)]
    if empty:
        raise SystemExit(f"--notebook {', '.join(empty)}: no task in that notebook; the tasks' "
                         f"notebooks are {', '.join(sorted({t.id[:2] for t in all_tasks()}))}")
    return (task_ids or []) + chosen


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimt.course pack",
                                     description="write a catch-up pack of solved tasks")
    parser.add_argument("file", type=Path)
    parser.add_argument("--task", action="append", metavar="ID", help="only this task (repeatable)")
    parser.add_argument("--notebook", action="append", metavar="NN",
                        help="every task of notebook NN (repeatable), e.g. once its deadline passed")
    args = parser.parse_args(argv)
    check_output_file("pack: FILE", args.file, "catch_up.json")
    if args.task:
        from .grade import chosen_tasks
        chosen_tasks(args.task)  # an unknown id is named, not packed as nothing
    pack = write_pack(args.file, notebook_tasks(args.task, args.notebook))
    print(f"{args.file}: tasks {', '.join(pack['tasks'])}; in a student copy, "
          f"minimt.course.catch_up(ID, pack='{args.file.name}') pastes one back")
    return 0
