"""Activation memory against step time for recompute = none / selective / full, on the CPU.

One process, --threads threads. For each attention kind (torch's fused kernel, minimt's formula)
and recompute mode: the bytes autograd saves during one forward pass of the whole model
(SavedTensorBytes, each storage once) and the median time of forward + backward over --steps
steps after --warmup, with ratios against recompute="none" of the same attention kind. The
expected extra FLOPs (Narayanan et al. 2021, arXiv 2104.04473) are printed beside the times.
    .venv/bin/python benchmarks/recompute_cpu.py [--steps 5] [--warmup 2] [--threads 1]
Prints a table and ends with one JSON line. Speed is measured here, never asserted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from minimt.config import GPTConfig
from minimt.memory import SavedTensorBytes
from minimt.model import GPT
from minimt.scale import flops_per_iteration

CONFIG = GPTConfig(vocab_size=65, block_size=128, n_layer=4, n_head=8, n_embd=256)
BATCH_SIZE = 8
MODES = ("none", "selective", "full")


def measure(attention: str, recompute: str, steps: int, warmup: int) -> dict:
    """Saved bytes of one forward and the median forward + backward time of one configuration."""
    torch.manual_seed(0)
    model = GPT(CONFIG, recompute=recompute)
    for block in model.transformer.h:
        block.attn.fused = attention == "fused"
    idx = torch.randint(0, CONFIG.vocab_size, (BATCH_SIZE, CONFIG.block_size),
                        generator=torch.Generator().manual_seed(1))      # (B, T)
    with SavedTensorBytes(exclude=model) as saved:
        model(idx, targets=idx)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        _, loss = model(idx, targets=idx)
        loss.backward()
        if step >= warmup:
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return {"saved_bytes": saved.bytes, "step_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    base_flops = flops_per_iteration(CONFIG, BATCH_SIZE, "none")
    print(f"GPT {CONFIG.n_layer} layers x {CONFIG.n_embd} wide, {CONFIG.n_head} heads, batch "
          f"{BATCH_SIZE} x {CONFIG.block_size} tokens, fp32, {args.threads} thread(s)")
    print(f"{'attention':<10}{'recompute':<11}{'saved MiB':>10}{'x none':>8}{'step ms':>9}"
          f"{'x none':>8}{'FLOPs x none':>14}")
    for attention in ("formula", "fused"):
        for mode in MODES:
            r = measure(attention, mode, args.steps, args.warmup)
            results[f"{attention}/{mode}"] = r
            base = results[f"{attention}/none"]
            flops = flops_per_iteration(CONFIG, BATCH_SIZE, mode) / base_flops
            print(f"{attention:<10}{mode:<11}{r['saved_bytes'] / 2**20:>10.2f}"
                  f"{r['saved_bytes'] / base['saved_bytes']:>8.3f}{1e3 * r['step_s']:>9.1f}"
                  f"{r['step_s'] / base['step_s']:>8.3f}{flops:>14.3f}")
    print(json.dumps({"benchmark": "recompute_cpu", "threads": args.threads, "results": results}))


if __name__ == "__main__":
    main()
