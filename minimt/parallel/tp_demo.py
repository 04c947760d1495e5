"""The `tp-train` demo: a tensor-parallel GPT trained a few steps on tinyshakespeare characters.

Every tensor-parallel rank builds the same serial GPT from the same seed, keeps its slice of the
weights (apply_tensor_parallel) and draws the same batches, so the loss printed at each step is
the serial model's loss (to float32 rounding). Run it with
    torchrun --standalone --nproc-per-node 2 -m minimt tp-train
or, from Python, launch(train_steps, tp=2). The demo (tp_train) then trains the serial model on
tensor-parallel rank 0 with the same batches and checks that the losses agree.
"""
from __future__ import annotations

import argparse

import torch

from ..config import GPTConfig
from ..data import char_dataset
from ..model import GPT
from ..train import Trainer, TrainConfig  # a demo: it sits on top, beside the Trainer's users
from .context import ParallelContext

# nanoGPT's character-level Shakespeare, shrunk so a step takes milliseconds on one CPU thread
DEMO_CONFIG = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64)


def train_steps(ctx: ParallelContext | None, config: GPTConfig = DEMO_CONFIG, steps: int = 10,
                batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
                verbose: bool = True) -> list[float]:
    """Train GPT(config) for `steps` AdamW steps on character batches with the Trainer; return
    the loss per step. ctx=None trains the serial model in this process; a ParallelContext trains
    this rank's share. Rank 0 of each tensor-parallel group prints the loss when `verbose`.
    """
    _, dataset = char_dataset("tinyshakespeare", byte_fallback=False)
    vocab = int(dataset.train.max()) + 1
    if config.vocab_size < vocab:
        raise ValueError(f"config.vocab_size={config.vocab_size} is smaller than the {vocab} "
                         f"characters of tinyshakespeare; use vocab_size >= {vocab}")
    torch.manual_seed(seed)
    settings = TrainConfig(max_iters=steps, batch_size=batch_size, learning_rate=lr,
                           decay_lr=False, warmup_iters=0, grad_clip=0.0, seed=seed,
                           progress=False)  # the same batches on every rank
    trainer = Trainer(GPT(config), dataset, settings, ctx=ctx)
    losses = []
    for step in range(steps):
        losses.append(trainer.train_step().item())
        if verbose and (ctx is None or ctx.tp_rank == 0):
            print(f"step {step:3d}  loss {losses[-1]:.4f}", flush=True)
    return losses


def tp_train(ctx: ParallelContext, argv: list[str]) -> list[float]:
    """Train a tensor-parallel GPT a few steps, print the loss per step, check it against serial."""
    options = argparse.ArgumentParser(prog="python -m minimt tp-train")
    options.add_argument("--steps", type=int, default=10)
    options.add_argument("--batch-size", type=int, default=8)
    options.add_argument("--lr", type=float, default=1e-3)
    options.add_argument("--tolerance", type=float, default=1e-4,
                         help="largest allowed |tensor-parallel loss - serial loss|")
    args = options.parse_args(argv)
    if ctx.pp_size != 1 or ctx.dp_size != 1:
        raise ValueError(f"tp-train runs tensor parallelism only, got pp={ctx.pp_size} "
                         f"dp={ctx.dp_size}; use --pp 1 --dp 1")
    if ctx.tp_rank == 0:
        print(f"tensor-parallel GPT on {ctx.tp_size} rank(s) ({ctx.backend}, {ctx.device}): "
              f"{DEMO_CONFIG}", flush=True)
    losses = train_steps(ctx, DEMO_CONFIG, args.steps, args.batch_size, args.lr)
    if ctx.tp_rank == 0:  # the others are done: no collective waits on this
        serial = train_steps(None, DEMO_CONFIG, args.steps, args.batch_size, args.lr, verbose=False)
        gap = max(abs(a - b) for a, b in zip(losses, serial))
        print(f"serial GPT, same seed and batches: max |loss difference| over {args.steps} steps "
              f"= {gap:.2e} (tolerance {args.tolerance:g})", flush=True)
        if gap > args.tolerance:
            raise RuntimeError(f"tensor-parallel and serial losses differ by {gap:.2e} > "
                               f"{args.tolerance:g}")
    return losses
