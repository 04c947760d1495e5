"""Benchmark: measured vs theoretical pipeline bubble and peak in-flight micro-batches.

For p in {2, 4} and m in {1, 4, 8}, each schedule (naive, GPipe, 1F1B, interleaved 1F1B with v=2
where m is divisible by p) runs one training step of a small GPT on p real gloo ranks:
- sleep: every action also sleeps --forward-ms per block (2x for B) = simulated compute,
  labelled as such; ranks do not fight for the 2 cores, so the bubble is comparable to theory;
- matmul: every action also does a fixed number of 256x256 matmuls per block (calibrated to
  --forward-ms on one idle core): real work, so 4 ranks share 2 cores and slow each other;
- none: the real compute of the small GPT only (uncontrolled; one thread per rank).
The bubble is 1 - (time inside actions, all ranks) / (p * wall time); the median of --repeats
steps after one warm-up step. Theory: (p-1)/(v m + p-1) (naive: (p-1)/p).

    python benchmarks/pipeline_bubble.py --forward-ms 10 --repeats 3
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from minimt.config import GPTConfig
from minimt.parallel import launch
from minimt.parallel.pipeline import bubble_fraction, peak_in_flight, pipeline_schedule, simulate
from minimt.parallel.pipeline_runtime import (ActionCost, build_stages, pipeline_step,
                                              timeline_from_records)

CONFIG = GPTConfig(vocab_size=65, block_size=32, n_layer=8, n_head=4, n_embd=64)
BATCH = 16


def cases(p: int) -> list[tuple[str, int, int]]:
    out = [("naive", 1, 1)]
    for m in (1, 4, 8):
        out += [("gpipe", m, 1), ("1f1b", m, 1)]
        if m % p == 0:
            out.append(("interleaved", m, 2))
    return out


def measure(ctx, costs: dict, repeats: int) -> list[dict]:
    """On each rank: for every case and cost mode, the StepRecords of `repeats` timed steps."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, CONFIG.vocab_size, (BATCH, CONFIG.block_size), generator=g)
    targets = torch.randint(0, CONFIG.vocab_size, (BATCH, CONFIG.block_size), generator=g)
    out = []
    for kind, m, v in cases(ctx.pp_size):
        stages = build_stages(CONFIG, ctx.pp_rank, ctx.pp_size, v)
        schedule = pipeline_schedule(kind, ctx.pp_size, m, v)
        for mode, cost in costs.items():
            records = [pipeline_step(stages, schedule, ctx, idx, targets, cost)
                       for _ in range(repeats + 1)][1:]  # the first step is a warm-up
            out.append({"case": (kind, m, v), "mode": mode, "records": records})
    return out


def table(p: int, per_rank: list[list[dict]], repeats: int) -> list[dict]:
    rows = {}
    for i, entry in enumerate(per_rank[0]):
        kind, m, v = entry["case"]
        bubbles = [timeline_from_records([per_rank[r][i]["records"][k] for r in range(p)])
                   .idle_fraction() for k in range(repeats)]
        row = rows.setdefault(entry["case"], {
            "schedule": kind, "p": p, "m": m, "v": v,
            "theory": bubble_fraction(kind, p, m, v),
            "simulated": simulate(pipeline_schedule(kind, p, m, v)).idle_fraction(),
            "peak_theory": peak_in_flight(pipeline_schedule(kind, p, m, v)),
            "peak_measured": [per_rank[r][i]["records"][0].peak_in_flight for r in range(p)]})
        row[entry["mode"]] = statistics.median(bubbles)
    return list(rows.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--forward-ms", type=float, default=10.0,
                        help="simulated compute per block per forward (backward: 2x)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per case (median)")
    args = parser.parse_args()
    forward_s = args.forward_ms / 1000
    # built here, before the ranks fork, so that every rank does the same matmul work
    costs = {"sleep": ActionCost(forward_s, "sleep"), "matmul": ActionCost(forward_s, "matmul"),
             "none": None}
    rows = []
    for p in (2, 4):
        per_rank = launch(measure, costs, args.repeats, pp=p, timeout_s=120)
        rows += table(p, per_rank, args.repeats)
    print(f"{'':<28}{'bubble (idle fraction)':^38}")
    print(f"{'schedule':<12}{'p':>2}{'m':>3}{'v':>3}{'theory':>8}{'sim':>7}{'sleep':>8}"
          f"{'matmul':>8}{'none':>7}  peak in flight per rank (measured / theory)")
    for r in rows:
        print(f"{r['schedule']:<12}{r['p']:>2}{r['m']:>3}{r['v']:>3}{r['theory']:>8.3f}"
              f"{r['simulated']:>7.3f}{r['sleep']:>8.3f}{r['matmul']:>8.3f}{r['none']:>7.3f}  "
              f"{r['peak_measured']} / {r['peak_theory']}")
    print(f"(sleep/matmul: {args.forward_ms:g} ms of simulated compute / of calibrated matmuls per "
          f"block per F, 2x per B; none: real compute only; median of {args.repeats} steps)")
    print(json.dumps({"config": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
