"""Time per training step and bytes communicated per step of a tensor-parallel GPT, tp = 1, 2, 4.

Each tp runs on its own launch of forked gloo ranks, one CPU thread each. A step is the Trainer's
forward, backward and AdamW on one character-level tinyshakespeare batch; its time is the median over
--steps steps after --warmup steps, timed on rank 0 between barriers (so it is the slowest rank's
time). The bytes are counted by CommCounter during one step and checked against Megatron's
formula (Shoeybi et al. 2019, arXiv 1909.08053): forward 2L+1 all-reduces of B*T*C (two per
layer + the embedding) and 3 of B*T (the vocab-parallel loss), backward 2L+1 of B*T*C (two per
layer + the output layer), 4 bytes each in float32.
    .venv/bin/python benchmarks/tensor_parallel.py [--steps 5] [--warmup 2] [--tp 1 2 4]
Prints a table and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

from minimt.config import GPTConfig
from minimt.data import char_dataset
from minimt.model import GPT
from minimt.train import TrainConfig, Trainer
from minimt.parallel import CommCounter, launch
from minimt.parallel.tp_viz import comm_bytes_per_step, params_per_rank

CONFIG = GPTConfig(vocab_size=65, block_size=128, n_layer=4, n_head=8, n_embd=256)
BATCH_SIZE = 8


def _barrier(ctx) -> None:
    if ctx.tp_size > 1:
        dist.barrier()


def _bench_rank(ctx, config: GPTConfig, batch_size: int, warmup: int, steps: int) -> dict:
    """On one rank: warmup + steps steps of the package's Trainer; time each, count one step's
    communication. No clipping: its norm all-reduce is not part of Megatron's formula."""
    _, dataset = char_dataset("tinyshakespeare", byte_fallback=False)
    settings = TrainConfig(batch_size=batch_size, learning_rate=3e-4, decay_lr=False,
                           warmup_iters=0, grad_clip=0.0, seed=0, progress=False)
    torch.manual_seed(0)
    trainer = Trainer(GPT(config), dataset, settings, ctx=ctx)
    times = []
    for step in range(warmup + steps):
        _barrier(ctx)
        start = time.perf_counter()
        with CommCounter() as counter:
            loss = trainer.train_step()
        _barrier(ctx)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times), "bytes": counter.bytes(),
            "all_reduces": counter.count(kind="all_reduce"), "loss": loss.item(),
            "params": sum(p.numel() for p in trainer.mesh.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median taken)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    cores = os.cpu_count()
    print(f"config: {CONFIG}, batch {BATCH_SIZE}; {args.warmup} warm-up + {args.steps} timed "
          f"steps (median); gloo, 1 thread per rank, {cores} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f} at start (other work on the machine slows every row)")
    rows = []
    for tp in args.tp:
        result = launch(_bench_rank, CONFIG, BATCH_SIZE, args.warmup, args.steps, tp=tp,
                        timeout_s=120)[0]
        expected = sum(comm_bytes_per_step(CONFIG, BATCH_SIZE, tp).values())
        if result["bytes"] != expected:
            raise AssertionError(f"tp={tp}: CommCounter saw {result['bytes']} bytes per step, "
                                 f"the formula says {expected}")
        if result["params"] != params_per_rank(CONFIG, tp):
            raise AssertionError(f"tp={tp}: a rank holds {result['params']} parameters, the "
                                 f"formula says {params_per_rank(CONFIG, tp)}")
        rows.append({"tp": tp, **result, "formula_bytes": expected})
    base = rows[0]["step_s"] if rows[0]["tp"] == 1 else None
    print(f"{'tp':>3} {'step ms':>9} {'vs tp=1':>8} {'all-reduces':>12} {'MB/step':>9} "
          f"{'formula MB':>11} {'params/rank':>12} {'loss':>7}")
    for row in rows:
        row["ratio_to_tp1"] = None if base is None else row["step_s"] / base
        ratio = "-" if base is None else f"{row['ratio_to_tp1']:.2f}x"
        print(f"{row['tp']:>3} {1e3 * row['step_s']:>9.1f} {ratio:>8} {row['all_reduces']:>12} "
              f"{row['bytes'] / 1e6:>9.3f} {row['formula_bytes'] / 1e6:>11.3f} "
              f"{row['params']:>12,} {row['loss']:>7.4f}")
    print("checked: bytes counted by CommCounter = formula 4*(2*(2L+1)*B*T*C + 3*B*T) for tp > 1, "
          "params/rank = tp_viz.params_per_rank")
    if max(args.tp) > cores:
        print(f"note: tp={max(args.tp)} runs {max(args.tp)} ranks on {cores} cores: ranks share "
              f"cores, so its time measures oversubscription as much as tensor parallelism")
    load = os.getloadavg()[0]
    if load > cores:
        print(f"note: load average {load:.1f} > {cores} cores: other processes compete for the CPU "
              f"and a launch with more ranks gets a larger share of it, so the ratios to tp=1 "
              f"overstate the speed-up; rerun on an idle machine")
    print(json.dumps({"benchmark": "tensor_parallel", "config": vars(CONFIG) | {
        "batch_size": BATCH_SIZE}, "cpu_count": cores, "warmup": args.warmup,
        "steps": args.steps, "load_average": load, "results": rows}))


if __name__ == "__main__":
    main()
