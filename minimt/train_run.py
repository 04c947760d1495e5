"""The checks and state of a `python -m minimt train` run folder, done before any rank starts:
an existing run is refused unless resumed or overwritten, `--out` must be a folder one can write,
the model must fit this machine, and a resumed run continues exactly where its checkpoint ended
(weights, AdamW state, loss scale, the batch sampler's and torch's random state)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .checkpoint_file import read_file
from .parallel.checkpoint import checkpoint_folder
from .model import param_count

# flags that must be the same when a run is resumed (the rest may change: layout, --iters, ...)
RESUME_FLAGS = ("preset", "batch_size", "lr", "warmup", "seed", "dtype")


def check_out(out: str, resume: bool, overwrite: bool) -> int | None:
    """Refuse an --out that cannot hold this run, before training; the step a --resume starts
    from (None for a new run)."""
    path = Path(out)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: give one")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: give a folder for the run's "
                         f"checkpoints (e.g. --out runs/a)")
    existing = (path / "latest").is_file()
    if resume:
        if not existing:
            raise ValueError(f"--resume: --out {out} holds no run to continue (no 'latest' file); "
                             f"drop --resume to start a new run there")
        try:
            return json.loads((checkpoint_folder(path) / "meta.json").read_text())["step"]
        except (FileNotFoundError, json.JSONDecodeError) as error:
            raise ValueError(f"--resume: the run in --out {out} cannot be read ({error}); start "
                             f"again with --overwrite") from None
    if existing and not overwrite:
        raise ValueError(f"--out {out} already holds a run (latest: "
                         f"{(path / 'latest').read_text().strip()}): pass --resume to continue "
                         f"it, --overwrite to replace it, or give another --out")
    if path.is_dir() and any(path.iterdir()) and not existing:
        raise ValueError(f"--out {out} is a folder with other files in it: give a new or empty "
                         f"folder for the run")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot create or write it ({ancestor} is not a writable "
                         f"folder); give a folder you can write to")
    return None


def check_resume_flags(out: str, flags: dict) -> None:
    """The flags that shape the run must be those the checkpoint was written with."""
    extra = checkpoint_folder(out) / "extra.pt"
    saved = json.loads(read_file(extra, "python -m minimt train")["flags"]) if extra.is_file() \
        else {}
    differ = [k for k in RESUME_FLAGS if k in saved and saved[k] != flags[k]]
    if differ:
        was = " ".join(f"--{k.replace('_', '-')} {saved[k]}" for k in differ)
        raise ValueError(f"--resume: the run in {out} was trained with {was}; resume it with the "
                         f"same flags (only the layout, --iters and the evaluation may change)")


def check_pipeline_flags(args) -> None:
    """Flags that would be ignored at this layout are refused, not dropped without a word."""
    if args.pp == 1:
        given = [flag for flag, value, default in (
            ("--schedule", args.schedule, "1f1b"), ("--microbatches", args.microbatches, None),
            ("--chunks", args.chunks, None)) if value != default]
        if given:
            raise ValueError(f"{' and '.join(given)} shape(s) the pipeline, and --pp is 1: add "
                             f"--pp 2 (or more), or drop {' '.join(given)}")
    if args.chunks not in (None, 1) and args.schedule not in ("interleaved", "zbv"):
        raise ValueError(f"--chunks {args.chunks} cuts each pipeline rank's layers into model "
                         f"chunks for --schedule interleaved: add it, or drop --chunks")
    m = args.microbatches
    per_replica, spread = divmod(args.batch_size, args.dp)
    if m and not args.rampup_batch_size and not spread and per_replica % m:
        raise ValueError(f"--batch-size {args.batch_size} over --dp {args.dp} gives {per_replica} "
                         f"sequences per replica, not divisible into {m} pipeline micro-batches "
                         f"(--microbatches {m}): give --batch-size a multiple of {args.dp * m}, "
                         f"or --microbatches dividing {per_replica}")
    if args.warmup is not None and args.warmup > args.iters:
        raise ValueError(f"--warmup {args.warmup} is longer than the run (--iters {args.iters}): "
                         f"give --warmup at most {args.iters}")
    if args.split != "969,30,1" and not args.data_path:
        raise ValueError(f"--split {args.split} divides the documents of --data-path, and none "
                         f"was given (the course's tinyshakespeare has its own 90/10 split): "
                         f"add --data-path PREFIX or drop --split")


def check_fits(config, preset: str, ranks: int) -> None:
    """Refuse a model this machine cannot even build: each of its `ranks` processes first builds
    the whole fp32 model (4 bytes a parameter) before keeping its share."""
    params = param_count(config)
    need = ranks * 4 * params
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ValueError(f"--preset {preset} has {params / 1e9:.3g}B parameters: its {ranks} "
                         f"rank(s) here would need {need / 2 ** 30:,.0f} GiB just to build it "
                         f"(4 bytes a parameter each; training needs ~16), and this machine has "
                         f"{have / 2 ** 30:,.0f} GiB; use --preset nanogpt-shakespeare-cpu (or "
                         f"gpt2-124m), and minimt.scale.estimate to see what {preset} needs")


def default_batch_size(dp: int, microbatches: int) -> tuple[int, str]:
    """12 (nanoGPT's CPU recipe), or the nearest multiple of dp x micro-batches above it, and a
    note saying why."""
    unit = dp * microbatches
    batch = -(-12 // unit) * unit
    return batch, ("" if batch == 12 else f"global batch {batch}: the default 12 does not divide "
                   f"into dp={dp} replicas x {microbatches} micro-batches")


def run_state(trainer, flags: dict) -> dict:
    """What a resumed run needs beside the weights and the optimizer (rank 0's `extra`)."""
    return {"batch_rng": trainer.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "flags": json.dumps(flags)}


def resume(trainer, extra: dict, step: int) -> None:
    """Put the trainer where the checkpoint's run stopped."""
    trainer.iter_num = step
    trainer.generator.set_state(extra["batch_rng"])
    torch.set_rng_state(extra["torch_rng"])


def remove_other_steps(out: str, keep: Path) -> None:
    """--overwrite: once the new run is saved, the replaced run's other step folders go."""
    for folder in Path(out).glob("iter_*"):
        if folder.name != keep.name:
            shutil.rmtree(folder)
