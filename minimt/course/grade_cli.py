"""`python -m minimt.course grade [--task ID] [--timeout S] [--jobs N] [--many DIR --out CSV]`: the grader's
command line over grade.py (one repository) and submissions.py (a folder of learners)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .grade import TIMEOUT_S, grade
from .submissions import grade_many


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimt.course grade",
                                     description="run every task's check and print the points")
    parser.add_argument("--task", action="append", metavar="ID", help="run only this task (repeatable)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, metavar="SECONDS",
                        help=f"seconds one task's check may run (default {TIMEOUT_S:g})")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="checks run at once, each in its own process (default 1; at most "
                             "the number of CPU cores is useful)")
    parser.add_argument("--many", type=Path, metavar="SUBMISSIONS_DIR",
                        help="grade every learner repository in this folder (one sub-folder each)")
    parser.add_argument("--out", type=Path, metavar="CSV", help="with --many: the table to write")
    args = parser.parse_args(argv)
    try:
        if args.timeout <= 0:
            raise SystemExit(f"--timeout {args.timeout:g}: give a positive number of seconds "
                             f"(default {TIMEOUT_S:g})")
        if args.jobs < 1:
            raise SystemExit(f"--jobs {args.jobs}: give how many checks may run at once, 1 or more")
        if args.many is not None:
            record = grade_many(args.many, args.out, args.task, args.timeout, args.jobs)
        elif args.out is not None:
            raise SystemExit("--out is for --many SUBMISSIONS_DIR: the table of many learners")
        else:
            record = grade(args.task, args.timeout, jobs=args.jobs)
    except SystemExit as err:
        if not isinstance(err.code, str):
            raise
        print(f"error: {err.code}", file=sys.stderr)
        print(json.dumps({"error": err.code}))        # a script still finds a JSON last line
        return 2
    print(json.dumps(record))
    passed = record["passed"] if "passed" in record else all(t["passed"] for t in record["tasks"])
    return 0 if passed else 1
