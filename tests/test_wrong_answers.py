# course: instructor only -- applies the catalogues of wrong answers (tests/wrong_answers/)
"""Every plausible wrong answer of the catalogue loses its task's points.

Each entry of tests/wrong_answers/wa_NN.py edits one task's solution region (`old` -> `new`). The
edit is applied to a temporary copy of the package and the task is graded there as `grade` grades
it (minimt.course.grade.run_task_isolated: a forked process importing the copy, with a time
limit): the task must fail, and its message must contain the entry's `hint` when one is given.
Two worker processes (one per core) import torch and the checks' libraries once, then fork.

An entry marked slow=True hangs until its check's launch timeout (a deadlock): the test leaves
it out; `python tests/test_wrong_answers.py --slow [TASK ...]` prints every entry's outcome and
the kill rate, slow ones included.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "tests" / "wrong_answers"
WORKERS = 2                # one per core of the CI machine
CHILD_TIMEOUT_S = 90       # a check that hangs fails in grade too; this only bounds the test


def catalogue() -> list[dict]:
    """Every entry of every tests/wrong_answers/wa_NN.py, with `source` naming its file."""
    entries = []
    for path in sorted(CATALOGUE.glob("wa_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        entries += [dict(entry, source=path.name) for entry in module.WRONG_ANSWERS]
    return entries


def _task_regions(task) -> tuple[str, str, list]:
    """(relative path, text, the task's regions) of the file holding `task`'s solution."""
    from minimt.course import regions
    from minimt.course.repo import task_file, task_of_region
    rel = task_file(task)
    text = (ROOT / rel).read_text(encoding="utf-8")
    mine = [r for r in regions.find_regions(text) if task_of_region(rel, r, [task])]
    return rel, text, mine


def mutated(entry: dict, tasks: dict) -> tuple[str, str]:
    """(relative path, the file's text with the entry's edit applied inside the task's region);
    raises ValueError when `old` is not exactly once inside the task's regions."""
    task = tasks[entry["task"]]
    rel, text, mine = _task_regions(task)
    lines = text.splitlines(keepends=True)
    starts = [sum(len(line) for line in lines[:r.begin + 1]) for r in mine]
    ends = [sum(len(line) for line in lines[:r.end]) for r in mine]
    hits = [(start + i) for start, end in zip(starts, ends)
            for i in _occurrences(text[start:end], entry["old"])]
    if len(hits) != 1:
        raise ValueError(f"{entry['source']}, task {entry['task']} ({entry['mistake']}): `old` "
                         f"occurs {len(hits)} times inside the task's regions of {rel}, not once")
    at = hits[0]
    return rel, text[:at] + entry["new"] + text[at + len(entry["old"]):]


def _occurrences(text: str, old: str) -> list[int]:
    found, at = [], text.find(old)
    while at >= 0:
        found.append(at)
        at = text.find(old, at + 1)
    return found


# ---------------------------------------------------------------------------- the worker process
def worker(jobs: list[dict]) -> list[dict]:
    """Apply each job's mutated text to one temporary copy of the package and grade the task
    there with grade's own run_task_isolated (a forked child that imports the copy), then restore."""
    import torch
    torch.set_num_threads(1)  # before any op: a forked child of a multi-threaded parent can hang
    import torch.distributed  # noqa: F401
    from minimt.course.grade import preload, run_task_isolated
    preload()                 # the checks' libraries (torch._dynamo too), once before the forks
    for name in ("megatron.core.datasets.helpers", "megatron.core.num_microbatches_calculator"):
        try:                  # notebook 09's optional oracles: ~2.5 s per entry otherwise
            with warnings.catch_warnings():  # "Transformer Engine and Apex are not installed"
                warnings.simplefilter("ignore")
                importlib.import_module(name)
        except ImportError:
            pass              # absent (megatron-core has Linux wheels only): the checks skip it
    with tempfile.TemporaryDirectory(prefix="minimt_wrong_") as tmp:
        copy = Path(tmp)
        shutil.copytree(ROOT / "minimt", copy / "minimt",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        results = []
        for job in jobs:
            path = copy / job["path"]
            original = path.read_text(encoding="utf-8")
            path.write_text(job["text"], encoding="utf-8")
            start = time.perf_counter()
            passed, message = run_task_isolated(job["task"], copy, timeout_s=CHILD_TIMEOUT_S)
            path.write_text(original, encoding="utf-8")
            results.append({"passed": passed, "message": message, "index": job["index"],
                            "seconds": time.perf_counter() - start})
        return results


# ---------------------------------------------------------------------------- running them all
def run_catalogue(task_ids: list[str] | None = None, slow: bool = False) -> list[dict]:
    """Every entry (or those of `task_ids`; slow ones only when `slow`) with its outcome:
    passed, message, killed, hint_ok."""
    from minimt.exercises import all_tasks
    tasks = {t.id: t for t in all_tasks()}
    entries = [e for e in catalogue() if (not task_ids or e["task"] in task_ids)
               and (slow or not e.get("slow"))]
    jobs = []
    entries.sort(key=lambda e: bool(e.get("slow")))  # the slow ones last, spread over workers
    for index, entry in enumerate(entries):
        rel, text = mutated(entry, tasks)
        jobs.append({"index": index, "task": entry["task"], "path": rel, "text": text})
    shares = [jobs[i::WORKERS] for i in range(WORKERS)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    processes = [subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
                 for share in shares if share]
    for p, share in zip(processes, shares):   # every worker gets its jobs before any is awaited
        p.stdin.write(json.dumps(share))
        p.stdin.close()
    outputs = [p.stdout.read() for p in processes]
    for p in processes:
        p.wait()
    for p in processes:
        assert p.returncode == 0, "a wrong-answer worker failed (its traceback is above)"
    outcome = {r["index"]: r for out in outputs for r in json.loads(out.splitlines()[-1])}
    for index, entry in enumerate(entries):
        result = outcome[index]
        entry.update(passed=result["passed"], message=result["message"],
                     seconds=result["seconds"], killed=not result["passed"],
                     hint_ok=not entry.get("hint") or entry["hint"] in result["message"])
    return entries


def test_catalogue_covers_every_task():
    """At least 3 wrong answers per task (5 for a 3-point task); each edits its task's region once."""
    from minimt.exercises import all_tasks
    tasks = {t.id: t for t in all_tasks()}
    entries = catalogue()
    unknown = sorted({e["task"] for e in entries} - set(tasks))
    assert not unknown, f"catalogue entries for unknown tasks {unknown}"
    for task_id, task in tasks.items():
        count = sum(e["task"] == task_id for e in entries)
        assert count >= (5 if task.points >= 3 else 3), f"task {task_id}: {count} wrong answers"
    for entry in entries:
        assert set(entry) <= {"task", "mistake", "old", "new", "hint", "slow", "source"}, entry
        assert entry["old"] != entry["new"] and entry["mistake"], entry
        mutated(entry, tasks)  # raises unless `old` is once inside the task's regions
    for path in CATALOGUE.glob("wa_*.py"):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# course: instructor only"), path.name


@pytest.mark.timeout(900)  # ~75 s of CPU on an idle 2-core machine; far more on a loaded one
def test_every_wrong_answer_loses_its_points():
    """Each wrong answer fails its task's check, with the entry's hint in the message."""
    entries = run_catalogue()
    escaped = [f"{e['source']} {e['task']}: {e['mistake']}" for e in entries if not e["killed"]]
    unhinted = [f"{e['source']} {e['task']}: {e['mistake']}: hint {e['hint']!r} not in "
                f"{e['message']!r}" for e in entries if e["killed"] and not e["hint_ok"]]
    assert not escaped, "wrong answers that keep their points:\n" + "\n".join(escaped)
    assert not unhinted, "failures without the expected hint:\n" + "\n".join(unhinted)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        results = worker(json.loads(sys.stdin.read()))
        print(json.dumps(results))
        return 0
    start = time.perf_counter()
    slow = "--slow" in argv
    entries = run_catalogue([a for a in argv if a != "--slow"] or None, slow)
    for e in entries:
        status = ("KILLED" if e["killed"] else "ESCAPED") + ("" if e["hint_ok"] else " (no hint)")
        print(f"{e['task']:<6}{status:<18}{e['seconds']:6.1f}s  {e['mistake']}")
        if not e["hint_ok"]:
            print(f"{'':30}expected hint {e['hint']!r} in: {e['message'][:300]}")
    killed = sum(e["killed"] for e in entries)
    hinted = sum(e["killed"] and e["hint_ok"] for e in entries)
    print(f"{len(entries)} wrong answers, {killed} killed ({killed / max(1, len(entries)):.0%}), "
          f"{hinted} with the expected hint, {time.perf_counter() - start:.0f} s")
    print(json.dumps({"wrong_answers": len(entries), "killed": killed, "hinted": hinted}))
    return 0 if killed == hinted == len(entries) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
