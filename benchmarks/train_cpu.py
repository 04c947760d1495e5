"""Benchmark: nanoGPT's shakespeare_char CPU recipe trained with minimt.train.Trainer.

Measures median ms per iteration, tokens/s, the validation loss after the run (mean and standard
error over many batches) and MFU = (flops_per_token * tokens/s) / this CPU's fp32 matmul
throughput, measured in the same run with the same thread count. With --compare N it also times a
plain nanoGPT-style loop (torch's default AdamW, .item() every step, batches sliced from a numpy
array) interleaved with the Trainer's steps, so both see the same load on a shared machine; with
N >= --iters that loop trains the whole recipe and its validation loss is reported too.

    python benchmarks/train_cpu.py --iters 2000 --dtype fp32 --threads 2
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import statistics
import time

import numpy as np
import torch

from minimt import GPT, GPTConfig, flops_per_token
from minimt.data import char_dataset
from minimt.train import Trainer, TrainConfig, batch_losses

# nanoGPT (github.com/karpathy/nanoGPT), the same recipe, fp32, 2 threads, measured on a quiet
# 2-core machine of the kind this course is tested on; its loss is its own 20-batch estimate
NANOGPT_MS_PER_ITER = 32.0
NANOGPT_VAL_LOSS = 1.874
WARMUP_STEPS = 10  # first steps (allocator, thread pool warm-up) left out of the median


def keep_freed_memory() -> bool:
    """Stop glibc from returning freed blocks to the OS (mmap threshold and trim threshold 1 GiB).

    Each step frees and re-allocates the same ~MB activation buffers; by default glibc serves them
    with fresh mmap()s, which the kernel must zero page by page (~400-650 page faults per step
    here). PyTorch's CPU performance guide recommends jemalloc/tcmalloc for the same reason.
    Returns False where this is not glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
    return libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok


def cpu_bf16_instructions() -> str:
    """The bf16 matrix instructions /proc/cpuinfo lists: "amx" (Intel AMX tiles), "avx512_bf16"
    (AVX-512 BF16 dot products, e.g. AMD Zen 4), or "none" (bf16 is converted to fp32 and back)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return "unknown"
    return "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "none"


def matmul_gflops(dtype: torch.dtype, sizes=(512, 1024, 2048), repeats: int = 5) -> dict[int, float]:
    """Best-of-`repeats` GFLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs) for each n."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        out[n] = 2 * n**3 / best / 1e9
    return out


def reference_step_fn(model, train_ids: np.ndarray, batch_size: int, block_size: int):
    """A plain nanoGPT-style step of the same recipe, independent of minimt.train: numpy slicing +
    torch.stack batches, nanoGPT's get_lr written out, torch's default AdamW (nanoGPT uses fused
    only on CUDA), clip, step, zero_grad, loss.item() every step."""
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.99))
    it = 0

    def get_lr(it, lr=1e-3, min_lr=1e-4, warmup=100, decay_iters=2000):
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay_iters:
            return min_lr
        coeff = 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / (decay_iters - warmup)))
        return min_lr + coeff * (lr - min_lr)

    def step():
        nonlocal it
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        ix = torch.randint(len(train_ids) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy(train_ids[i:i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(train_ids[i + 1:i + 1 + block_size].astype(np.int64))
                         for i in ix])
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
        return loss.item()
    return step


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def print_table(r: dict, fp32_peak: dict[int, float]) -> None:
    """The readable summary of result dict `r`, against nanoGPT's reference run."""
    print(f"nanoGPT shakespeare_char CPU recipe: {r['params']:,} parameters, {r['iters']} "
          f"iterations of {r['tokens_per_iter']} tokens, {r['dtype']}, {r['threads']} threads, "
          f"malloc thresholds {'raised' if r['malloc_tuned'] else 'default'}")
    print(f"{'':28}{'minimt':>12}{'nanoGPT*':>12}{'ratio':>9}")
    print(f"{'ms per iteration (median)':28}{r['ms_per_iter']:12.2f}{NANOGPT_MS_PER_ITER:12.1f}"
          f"{r['ms_per_iter'] / NANOGPT_MS_PER_ITER:9.2f}")
    print(f"{'tokens per second':28}{r['tokens_per_s']:12,}"
          f"{r['tokens_per_iter'] / NANOGPT_MS_PER_ITER * 1e3:12,.0f}"
          f"{NANOGPT_MS_PER_ITER / r['ms_per_iter']:9.2f}")
    print(f"{'validation loss':28}{r['val_loss']:12.4f}{NANOGPT_VAL_LOSS:12.3f}"
          f"{r['val_loss'] / NANOGPT_VAL_LOSS:9.3f}")
    print(f"  (mean over {r['val_batches']} batches of 12 x 64, standard error "
          f"{r['val_loss_se']:.4f}; nanoGPT's: 20 batches)")
    low, high = r["val_loss_20_batch_range"]
    print(f"  {r['val_batches'] // 20} disjoint 20-batch means, as nanoGPT estimates it: "
          f"{low:.4f} .. {high:.4f} (std {r['val_loss_20_batch_std']:.4f})")
    print(f"{'achieved GFLOP/s':28}{r['achieved_gflops']:12.1f}  "
          f"({r['flops_per_token']:,} FLOP/token = 6N + 12LCT)")
    print(f"{'fp32 matmul GFLOP/s':28}{r['fp32_matmul_gflops']:12.1f}  "
          + ", ".join(f"n={n}: {g:.0f}" for n, g in fp32_peak.items()))
    print(f"{'MFU (vs fp32 matmul)':28}{r['mfu']:12.1%}")
    if "mfu_vs_bf16" in r:
        print(f"{'MFU (vs bf16 matmul)':28}{r['mfu_vs_bf16']:12.1%}  "
              f"(bf16 matmul {r['bf16_matmul_gflops']:.0f} GFLOP/s = "
              f"{r['bf16_matmul_gflops'] / r['fp32_matmul_gflops']:.1f}x fp32; bf16 "
              f"instructions in /proc/cpuinfo: {r['cpu_bf16_instructions']})")
    if "reference_ms_per_iter" in r:
        print(f"interleaved with a plain nanoGPT-style loop over the first {r['reference_steps']} "
              f"steps: plain {r['reference_ms_per_iter']:.2f} ms, Trainer "
              f"{r['trainer_ms_same_steps']:.2f} ms per iteration (median, same conditions)")
    if "reference_val_loss" in r:
        print(f"validation loss of the plain loop's model (same {r['val_batches']} batches): "
              f"{r['reference_val_loss']:.4f}")
    print("* nanoGPT (github.com/karpathy/nanoGPT): same recipe, fp32, 2 threads, measured earlier on "
          "a quiet 2-core machine of this kind, not in this run")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=2000, help="optimizer steps (default 2000)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 = torch.autocast(cpu, bfloat16); weights stay fp32")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--eval-batches", type=int, default=400,
                        help="validation batches (12 x 64 tokens) averaged for the final loss")
    parser.add_argument("--compare", type=int, default=0, metavar="N",
                        help="also time N steps of a plain nanoGPT-style loop, interleaved")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--malloc-default", action="store_true",
                        help="keep glibc's default malloc thresholds (see keep_freed_memory)")
    args = parser.parse_args()
    if args.iters <= WARMUP_STEPS:
        parser.error(f"--iters must be > {WARMUP_STEPS} (the first {WARMUP_STEPS} are warm-up)")
    if args.eval_batches < 40:
        parser.error("--eval-batches must be >= 40 (the spread of 20-batch means is reported)")
    torch.set_num_threads(args.threads)
    malloc_tuned = False if args.malloc_default else keep_freed_memory()

    _, dataset = char_dataset("tinyshakespeare", byte_fallback=False)  # 65 characters, as nanoGPT
    model_config = GPTConfig.from_preset("nanogpt-shakespeare-cpu")
    torch.manual_seed(args.seed)
    model = GPT(model_config)
    train_config = TrainConfig(
        max_iters=args.iters, batch_size=12, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
        lr_decay_iters=2000, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0,
        autocast_dtype="bfloat16" if args.dtype == "bf16" else None, seed=args.seed,
        progress=False)
    trainer = Trainer(model, dataset, train_config)
    tokens_per_iter = train_config.batch_size * model_config.block_size

    step_times, reference_times = [], []
    if args.compare:
        torch.manual_seed(args.seed)
        reference_model = GPT(model_config)
        reference_step = reference_step_fn(reference_model, dataset.train.numpy().astype(np.uint16),
                                           train_config.batch_size, model_config.block_size)
    wall0 = time.perf_counter()
    for it in range(args.iters):
        step_times.append(timed(trainer.train_step))  # CPU ops are synchronous: the step is done
        if it < args.compare:
            reference_times.append(timed(reference_step))
    wall = time.perf_counter() - wall0 - sum(reference_times)

    ms_per_iter = 1e3 * statistics.median(step_times[WARMUP_STEPS:])
    tokens_per_s = tokens_per_iter / (ms_per_iter / 1e3)
    val = batch_losses(model, dataset.get_batch, "val", args.eval_batches, 12,
                       model_config.block_size, torch.Generator().manual_seed(args.seed + 2),
                       train_config.autocast_dtype)
    val_loss, val_se = val.mean().item(), (val.std() / math.sqrt(len(val))).item()
    reference_val = None
    if args.compare >= args.iters:  # the plain loop ran the whole recipe: score it the same way
        reference_val = batch_losses(reference_model, dataset.get_batch, "val", args.eval_batches,
                                     12, model_config.block_size,
                                     torch.Generator().manual_seed(args.seed + 2)).mean().item()
    # nanoGPT's estimate averages 20 random batches: the spread of such estimates on our model
    groups = val[: len(val) // 20 * 20].view(-1, 20).mean(dim=1)  # (eval_batches // 20,)

    fp32_peak = matmul_gflops(torch.float32)
    peak = max(fp32_peak.values())
    fpt = flops_per_token(model_config)
    achieved = fpt * tokens_per_s / 1e9
    result = dict(dtype=args.dtype, iters=args.iters, threads=args.threads,
                  malloc_tuned=malloc_tuned, params=model.num_params(),
                  tokens_per_iter=tokens_per_iter,
                  ms_per_iter=round(ms_per_iter, 2), tokens_per_s=round(tokens_per_s),
                  wall_s=round(wall, 1), val_loss=round(val_loss, 4),
                  val_loss_se=round(val_se, 4), val_batches=args.eval_batches,
                  val_loss_20_batch_range=[round(groups.min().item(), 4),
                                           round(groups.max().item(), 4)],
                  val_loss_20_batch_std=round(groups.std().item(), 4),
                  flops_per_token=fpt, achieved_gflops=round(achieved, 1),
                  fp32_matmul_gflops=round(peak, 1), mfu=round(achieved / peak, 4))
    if args.dtype == "bf16":
        bf16_peak = max(matmul_gflops(torch.bfloat16).values())
        result.update(bf16_matmul_gflops=round(bf16_peak, 1),
                      cpu_bf16_instructions=cpu_bf16_instructions(),
                      mfu_vs_bf16=round(achieved / bf16_peak, 4))
    if reference_times:
        ref_ms = 1e3 * statistics.median(reference_times[WARMUP_STEPS:])
        result.update(reference_ms_per_iter=round(ref_ms, 2),
                      reference_steps=len(reference_times),
                      trainer_ms_same_steps=round(1e3 * statistics.median(
                          step_times[WARMUP_STEPS:len(reference_times)]), 2))
    if reference_val is not None:
        result.update(reference_val_loss=round(reference_val, 4))

    print_table(result, fp32_peak)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
