"""The checks of minimt.parallel.checkpoint: what a save or a load refuses, and with which
sentence, before it reads or writes anything (the optimizer's type, the step, the dtype, another
kind of checkpoint, a rank that skipped a collective save)."""
from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path

import torch

from .comm import barrier
from .context import ParallelContext
from .zero import DistributedOptimizer


def check_optimizer(optimizer, what: str) -> None:
    """Refuse, before anything is read or written, an optimizer whose state the format cannot
    hold: it keeps AdamW's exp_avg and exp_avg_sq (and fp32 masters), nothing else."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if optimizer is None or isinstance(optimizer, DistributedOptimizer) \
            or type(inner) is torch.optim.AdamW:
        return
    module = type(inner).__module__
    name = ("torch.optim" if module.startswith("torch.optim") else module) + "." + \
        type(inner).__name__
    raise TypeError(f"{what} holds AdamW's state (exp_avg, exp_avg_sq), not that of "
                    f"{name}: pass optimizer=None to "
                    f"{'save' if what.startswith('save') else 'load'} the weights only, or train "
                    f"with torch.optim.AdamW or minimt.parallel.DistributedOptimizer")


def check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise TypeError(f"save_checkpoint(step={step!r}): step must be an integer >= 0 (the "
                        f"number of optimizer steps taken, e.g. trainer.iter_num)")
    return int(step)  # a numpy integer too


def scaler_state(optimizer) -> dict | None:
    """The loss scaler's numbers (scale, growth tracker...), so a resumed fp16 run keeps them."""
    scaler = getattr(optimizer, "loss_scaler", None)
    return None if scaler is None else {k: v for k, v in vars(scaler).items()
                                        if isinstance(v, (int, float))}


def collective(ctx: ParallelContext, what: str) -> None:
    """A barrier whose timeout says what went wrong: a rank that skipped this call."""
    try:
        barrier(ctx)
    except RuntimeError as error:
        if "timed out" not in str(error).lower() and "timeout" not in str(error).lower():
            raise
        raise RuntimeError(f"{what} is collective: every rank must call it (rank {ctx.rank} "
                           f"waited in vain for the others); call it on all ranks, not under "
                           f"`if ctx.rank == 0:`") from None


def not_a_checkpoint_folder(root: Path) -> None:
    """Say what `root` is when it is another kind of checkpoint, and how to use it."""
    if root.is_file() and (root.parent / "meta.json").is_file():
        raise ValueError(f"{root} is one file of the checkpoint {root.parent}: give the folder "
                         f"({root.parent.parent} for its latest step)")
    if root.is_file():
        raise ValueError(f"{root} is a file, not a checkpoint folder (a Trainer checkpoint "
                         f"written by Trainer.save_checkpoint?): load it with "
                         f"trainer.load_checkpoint({os.fspath(root)!r}); this call reads the folder"
                         f" that `python -m minimt train --out` or save_checkpoint(directory, ...) "
                         f"writes")
    if (root / "config.json").is_file() and not (root / "latest").exists():
        raise ValueError(f"{root} is a Hugging Face model folder (config.json), not a minimt "
                         f"checkpoint: load it with GPT.from_hf_gpt2({os.fspath(root)!r}); this "
                         f"call reads the folder that `python -m minimt train --out` or "
                         f"save_checkpoint(directory, ...) writes")


def check_dtype(directory, saved: str, weights: dict, params) -> None:
    """Warn when the model's dtype differs from the saved one; refuse values it cannot hold."""
    for name, param, _ in params:
        if str(param.dtype).removeprefix("torch.") == saved or not param.is_floating_point():
            continue
        biggest = weights[name].float().abs().max().item()
        if biggest > torch.finfo(param.dtype).max:
            raise ValueError(f"the checkpoint {os.fspath(directory)!r} holds {saved} values up to "
                             f"{biggest:.3g} in {name}, beyond {param.dtype}'s largest "
                             f"{torch.finfo(param.dtype).max:.3g}: load it into a {saved} (or "
                             f"float32) model, e.g. model.to(torch.{saved}) before loading")
    changed = {str(p.dtype).removeprefix("torch.") for _, p, _ in params} - {saved}
    if changed:
        warnings.warn(f"the checkpoint {os.fspath(directory)!r} holds {saved} weights and this "
                      f"model is {sorted(changed)}: the values are converted (rounded); cast the "
                      f"model with model.to(torch.{saved}) first to keep them exact",
                      stacklevel=3)
