"""Demos for `python -m minimt <name>`: functions run on every rank of a launch or of torchrun.

A demo is `fn(ctx, argv) -> result`: `ctx` is the rank's ParallelContext, `argv` the command-line
words minimt did not use (parse them with argparse). Raise on a failed check: the run then ends
with an error and a non-zero exit code. To add one, decorate it here (or in a module imported
here) with its command name; its docstring's first line is its help text:

    @register("tp-train")
    def tp_train(ctx: ParallelContext, argv: list[str]):
        \"\"\"Train a tensor-parallel GPT for a few steps and compare with the serial model.\"\"\"
        options = argparse.ArgumentParser(prog="python -m minimt tp-train")
        options.add_argument("--steps", type=int, default=20)
        steps = options.parse_args(argv).steps
        ...
"""
from __future__ import annotations

import argparse
import os
from typing import Callable

import torch

from .parallel import ParallelContext, all_reduce

DEMOS: dict[str, Callable] = {}
DEMO_OPTIONS: dict[str, argparse.ArgumentParser] = {}  # checked by the caller before launching


def register(name: str, options: argparse.ArgumentParser | None = None) -> Callable:
    """Decorator: make `fn(ctx, argv)` runnable as `python -m minimt <name>`; `options`, the
    parser of its argv, lets the caller refuse a bad option before any rank starts."""
    def add(fn: Callable) -> Callable:
        if name in DEMOS:
            raise ValueError(f"a demo called {name!r} already exists ({DEMOS[name].__module__})")
        DEMOS[name] = fn
        if options is not None:
            DEMO_OPTIONS[name] = options
        return fn
    return add


def rank_print(ctx: ParallelContext, *values) -> None:
    """print with a "[rank r]" prefix under torchrun (launch adds that prefix by itself)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or "RANK" in os.environ:
        print(f"[rank {ctx.rank}] " + " ".join(map(str, values)), flush=True)
    else:
        print(*values, flush=True)


@register("allreduce", argparse.ArgumentParser(prog="python -m minimt allreduce",
                                               description="takes no options"))
def allreduce(ctx: ParallelContext, argv: list[str]) -> dict[str, float]:
    """Each rank all-reduces its rank over the world and its tp, pp and dp groups; checks sums."""
    if argv:
        raise SystemExit(f"allreduce takes no options, got {argv}")
    sums = {}
    for group, members in (("world", list(range(ctx.world_size))), ("tp", ctx.tp_ranks),
                           ("pp", ctx.pp_ranks), ("dp", ctx.dp_ranks)):
        value = torch.tensor([float(ctx.rank)], device=ctx.device)
        all_reduce(value, ctx, group)  # sum over the group, in place
        sums[group] = value.item()
        ok = sums[group] == sum(members)
        rank_print(ctx, f"all_reduce over {group:<5} ranks {members}: sum of ranks = "
                        f"{sums[group]:g} (expected {sum(members)}) {'ok' if ok else 'WRONG'}")
        if not ok:
            raise RuntimeError(f"all_reduce over {group} gave {sums[group]}, expected "
                               f"{sum(members)}")
    return sums


from .parallel.tp_demo import TP_TRAIN_OPTIONS, tp_train  # noqa: E402 (beside its training loop)

register("tp-train", TP_TRAIN_OPTIONS)(tp_train)
