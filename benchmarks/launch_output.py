"""Benchmark: how long `launch` takes to forward heavy rank output, with and without newlines.

Each of --ranks ranks writes --megabytes MB to its stdout in 64 KiB writes, either as one long
line (no newline until the end: a progress bar or a binary dump) or as 100-character lines. The
caller's stdout is /dev/null, so the time is the launcher's forwarding, not a terminal's drawing.
Forwarding must be linear in the output: both kinds should take about the same time.

    python benchmarks/launch_output.py --megabytes 80 --ranks 2
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from minimt.parallel import launch

CHUNK = 64 * 1024


def write_output(ctx, megabytes: int, newlines: bool) -> int:
    """Write `megabytes` MB to stdout in CHUNK-sized writes; return the bytes written."""
    line = ("x" * 99 + "\n") if newlines else "x" * 100
    chunk = line * (CHUNK // 100)
    total = 0
    while total < megabytes * 1_000_000:
        sys.stdout.write(chunk)
        total += len(chunk)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return total


def timed_launch(megabytes: int, ranks: int, newlines: bool) -> float:
    """Seconds for one launch whose ranks each write `megabytes` MB, caller's stdout to /dev/null."""
    saved = sys.stdout
    with open(os.devnull, "w") as sink:
        sys.stdout = sink
        try:
            start = time.perf_counter()
            launch(write_output, megabytes, newlines, tp=ranks, timeout_s=600)
            return time.perf_counter() - start
        finally:
            sys.stdout = saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=80, help="MB written by each rank")
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    result = {"megabytes_per_rank": args.megabytes, "ranks": args.ranks}
    print(f"{'output':<22}{'seconds':>10}")
    for newlines in (True, False):
        name = "lines" if newlines else "one_line"
        seconds = timed_launch(args.megabytes, args.ranks, newlines)
        result[f"{name}_s"] = round(seconds, 2)
        print(f"{name:<22}{seconds:>10.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
