"""Step time of the nanoGPT shakespeare-char CPU config in fp32, bf16 autocast, fp16 autocast
(with dynamic loss scaling) and a true fp16 model with fp32 master weights, measured in one run.

Usage: python benchmarks/precision_cpu.py [--iters 20] [--warmup 3] [--threads N]
Prints a table and a final JSON line. One step = the Trainer's forward + backward + optimizer step
(AdamW; fp32 master weights and dynamic loss scaling where the mode has them).
The modes are timed round-robin (one step of each in turn) so that load from other processes
hits them alike. On a CPU with bf16 matrix instructions (Intel AMX, AVX-512 BF16) bf16 matmuls
are fast; without them there is no gain, and fp16 matmuls on CPU are usually slower than fp32. This is a measurement, never an assertion.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from minimt.config import GPTConfig
from minimt.model import GPT
from minimt.precision_train import MODES as PRECISION_MODES
from minimt.train import TrainConfig, Trainer

MODES = ("fp32", "bf16-autocast", "fp16-autocast", "fp16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per mode first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_config = GPTConfig.from_preset("nanogpt-shakespeare-cpu")
    config = TrainConfig(batch_size=12, progress=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(model_config.vocab_size, (config.batch_size, model_config.block_size),
                      generator=gen)                                    # (B, T)
    y = torch.randint(model_config.vocab_size, x.shape, generator=gen)  # (B, T)
    runs = {}
    for mode in MODES:  # the package's Trainer, in each mode's weights, autocast and scaling
        dtype, autocast_dtype, _ = PRECISION_MODES[mode]
        torch.manual_seed(0)
        settings = TrainConfig(batch_size=config.batch_size, progress=False,
                               autocast_dtype=autocast_dtype,
                               dtype=None if dtype == torch.float32 else "float16")
        runs[mode] = Trainer(GPT(model_config), lambda *_: (x, y), settings)  # one fixed batch
    times = {mode: [] for mode in MODES}
    for i in range(args.warmup + args.iters):
        for mode, trainer in runs.items():
            start = time.perf_counter()
            trainer.train_step().item()
            if i >= args.warmup:
                times[mode].append(time.perf_counter() - start)

    medians = {mode: statistics.median(t) * 1e3 for mode, t in times.items()}
    tokens = config.batch_size * model_config.block_size
    print(f"nanoGPT shakespeare-char CPU config: {model_config.n_layer} layers, "
          f"{model_config.n_embd} wide, block {model_config.block_size}, batch "
          f"{config.batch_size}; {args.threads} threads; median of {args.iters} steps")
    print(f"{'mode':<16}{'ms/step':>10}{'tokens/s':>12}{'fp32 / mode':>14}")
    for mode, ms in medians.items():
        print(f"{mode:<16}{ms:>10.1f}{tokens / ms * 1e3:>12.0f}{medians['fp32'] / ms:>14.2f}")
    print(json.dumps({"benchmark": "precision_cpu", "threads": args.threads, "iters": args.iters,
                      "ms_per_step": {m: round(v, 2) for m, v in medians.items()},
                      "speedup_vs_fp32": {m: round(medians["fp32"] / v, 3)
                                          for m, v in medians.items()}}))


if __name__ == "__main__":
    main()
