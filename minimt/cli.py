"""`python -m minimt train` and `python -m minimt generate`: the course's model on any layout.

Run directly, minimt forks one process per rank (launch); under
`torchrun --standalone --nproc-per-node N -m minimt train ...` each process is one rank. The
batch size is the global batch, so the same flags train the same model at every layout.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from .checks import cli_number
from .config import PRESETS, GPTConfig
from .data import char_dataset, corpus_path
from .data_checks import check_token_data
from .data_path import MegatronData
from .eval_cli import eval_main
from .generate import stream
from .model import GPT, param_count
from .parallel import LaunchTimeout, ParallelContext, RankError, launch
from .parallel.checkpoint import (load_checkpoint, load_serial_model, read_checkpoint,
                                  save_checkpoint)
from .parallel.layout import check_layout
from .parallel.launch import TORCHRUN_VARIABLES, check_torchrun_world_size
from .parallel.pipeline import PIPELINE_SCHEDULES
from .parallel.rank_main import seed_everything
from .parallel.tensor import apply_tensor_parallel
from .preprocess import preprocess_main
from .train import NonFiniteLoss, TrainConfig, Trainer
from .train_run import (RESUME_FLAGS, check_fits, check_out, check_pipeline_flags,
                        check_resume_flags, default_batch_size, remove_other_steps, resume,
                        run_state)

CORPUS = "tinyshakespeare"  # the course data: nanoGPT's character-level Shakespeare
CORPUS_FIX = (f"; or restore the course's data/{CORPUS}.txt (and unset $MINIMT_DATA), or train on "
              f"your text with --data-path (python -m minimt preprocess)")
DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def _mesh_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tp", type=cli_number(int, 1), default=1,
                        help="tensor-parallel size (splits heads, MLP and vocabulary; must divide "
                        "n_head)")
    parser.add_argument("--backend", choices=("gloo", "nccl"), default=None,
                        help="default: nccl with one GPU per rank, else gloo (CPU processes)")
    parser.add_argument("--timeout-s", type=cli_number(float, 0, low_open=True), default=120.0,
                        help="how long a rank may wait on its peers before the run fails")


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minimt train", description="Train the course's GPT on character-level "
        "tinyshakespeare on a (dp, pp, tp) mesh and write a checkpoint that any layout can read.",
        epilog="example: python -m minimt train --tp 2 --pp 2 --dp 2 --iters 20 --out runs/3d\n"
               "under torchrun: torchrun --standalone --nproc-per-node 8 -m minimt train "
               "--tp 2 --pp 2 --dp 2 --iters 20 --out runs/3d",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="nanogpt-shakespeare-cpu",
                        help="model shape (default: nanoGPT's shakespeare_char CPU recipe)")
    _mesh_options(parser)
    parser.add_argument("--pp", type=cli_number(int, 1), default=1,
                        help="pipeline-parallel size (stages of consecutive blocks)")
    parser.add_argument("--dp", type=cli_number(int, 1), default=1,
                        help="data-parallel size (replicas, each reading batch-size/dp sequences)")
    parser.add_argument("--cp", type=cli_number(int, 1), default=1,
                        help="context-parallel size (each rank holds 1/cp of every sequence; "
                        "ring attention)")
    parser.add_argument("--zero", type=int, nargs="?", const=1, default=0, choices=(0, 1, 2, 3),
                        help="ZeRO stage over the data-parallel replicas: 1 (--zero alone) shards "
                        "the AdamW state, 2 also the gradients, 3 also the weights (FSDP; not with --pp > 1)")
    parser.add_argument("--schedule", choices=PIPELINE_SCHEDULES, default="1f1b",
                        help="pipeline schedule when --pp > 1")
    parser.add_argument("--chunks", type=cli_number(int, 1), default=None,
                        help="model chunks per pipeline rank for --schedule interleaved "
                        "(default 2)")
    parser.add_argument("--microbatches", type=cli_number(int, 1), default=None,
                        help="pipeline micro-batches per step (default 2 x pp)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights: fp32, "
                        "or bf16/fp16 with fp32 master weights (fp16 adds dynamic loss scaling)")
    parser.add_argument("--batch-size", type=cli_number(int, 1), default=None,
                        help="global batch: sequences per step over all replicas (default 12, or "
                        "the next multiple of dp x micro-batches)")
    parser.add_argument("--seed", type=int, default=1337,
                        help="seeds the initial weights and the batches")
    parser.add_argument("--iters", type=cli_number(int, 1), required=True, help="optimizer steps")
    parser.add_argument("--lr", type=cli_number(float, 0, low_open=True), default=1e-3,
                        help="peak learning rate")
    parser.add_argument("--warmup", type=cli_number(int, 0), default=None,
                        help="warm-up steps (default: a tenth of --iters, at most 100)")
    parser.add_argument("--eval-interval", type=cli_number(int, 1), default=250,
                        help="evaluate every this many steps (and at the end)")
    parser.add_argument("--eval-iters", type=cli_number(int, 1), default=20,
                        help="batches per evaluation")
    parser.add_argument("--out", required=True, help="checkpoint directory to write (a new one, "
                        "unless --resume or --overwrite)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from "
                        "its latest checkpoint, at any layout, up to --iters")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in --out (its checkpoints go once the new run saved)")
    parser.add_argument("--save-interval", type=cli_number(int, 1), default=None,
                        help="also save a checkpoint every this many steps (default: at the end)")
    parser.add_argument("--data-path", nargs="+", default=None, metavar="[WEIGHT] PREFIX",
                        help="train on Megatron indexed datasets (python -m minimt preprocess), "
                        "blended by weight: --data-path 0.7 data/a_text_document 0.3 "
                        "data/b_text_document (default: character-level tinyshakespeare)")
    parser.add_argument("--split", default="969,30,1", help="train,valid,test document shares")
    parser.add_argument("--rampup-batch-size", nargs=3, type=cli_number(int, 1), default=None,
                        metavar=("START", "INCR", "SAMPLES"), help="grow the global batch from "
                        "START by INCR over SAMPLES samples up to --batch-size (Megatron's flag)")
    return parser


def train_settings(args) -> TrainConfig:
    """The TrainConfig the flags ask for."""
    chunks = args.chunks or (2 if args.schedule in ("interleaved", "zbv") else 1)
    warmup = min(100, args.iters // 10) if args.warmup is None else args.warmup
    micro, ramp = args.batch_size, getattr(args, "rampup_batch_size", None)
    if ramp:  # each micro-step draws a batch that divides every size of the ramp
        micro = math.gcd(ramp[0], ramp[1], args.batch_size)
    return TrainConfig(max_iters=args.iters, batch_size=micro, learning_rate=args.lr,
                       gradient_accumulation_steps=args.batch_size // micro,
                       rampup_batch_size=tuple(ramp) if ramp else None,
                       min_lr=args.lr / 10, warmup_iters=warmup, eval_interval=args.eval_interval,
                       eval_iters=args.eval_iters, seed=args.seed, schedule=args.schedule,
                       num_microbatches=args.microbatches, num_chunks=chunks, zero=args.zero,
                       dtype=DTYPES[args.dtype])


def _train_data(args, settings: TrainConfig):
    """(data, vocab_size): Megatron's blended samples for --data-path, else tinyshakespeare."""
    if not getattr(args, "data_path", None):
        return char_dataset(CORPUS, byte_fallback=False)[1], None
    block = GPTConfig.from_preset(args.preset).block_size
    ramp = settings.ramp
    samples = ramp.consumed(args.iters) if ramp else args.iters * args.batch_size
    data = MegatronData(args.data_path, block, samples, split=args.split, seed=args.seed)
    return data, -(-data.vocab_size // 64) * 64  # padded so any tensor-parallel size divides it


def _train_rank(ctx, args) -> dict:
    """One rank: build the serial GPT from the seed, train this rank's share, save."""
    settings = train_settings(args)
    data, vocab_size = _train_data(args, settings)
    overrides = {"vocab_size": vocab_size} if vocab_size else {}
    torch.manual_seed(args.seed)
    trainer = Trainer(GPT(GPTConfig.from_preset(args.preset, **overrides)), data, settings, ctx=ctx)
    if ctx.rank == 0:
        print(f"training {args.preset} ({param_count(trainer.model.config) / 1e6:.2f}M parameters) on "
              f"tp={ctx.tp_size} pp={ctx.pp_size} dp={ctx.dp_size}"
              f"{f' cp={ctx.cp_size}' if ctx.cp_size > 1 else ''}"
              f"{f' + ZeRO-{args.zero}' if args.zero else ''}"
              f" ({ctx.backend or 'one process'}, {ctx.device}), global batch {args.batch_size}, "
              f"{args.dtype}", flush=True)
    if not _in_process(ctx) and not _under_torchrun():  # launch forwards output line by line
        trainer.progress_file = ProgressLines(sys.stderr)
    if args.resume:
        meta = load_checkpoint(args.out, trainer.mesh.chunks, trainer.optimizer, ctx)
        resume(trainer, meta["extra"], meta["step"])
    flags = {k: getattr(args, k) for k in RESUME_FLAGS}
    while True:  # the optimizer's state too: AdamW, ZeRO-1's shards, 16-bit runs' fp32 masters
        history = trainer.train(num_iters=args.save_interval)
        folder = save_checkpoint(args.out, trainer.mesh.chunks, trainer.optimizer, ctx,
                                 step=trainer.iter_num, extra=run_state(trainer, flags))
        if trainer.iter_num == args.iters:
            break
    if args.overwrite and ctx.rank == 0:
        remove_other_steps(args.out, folder)
    if ctx.rank == 0:
        it, train_loss = history["train"][-1]
        print(f"step {it + 1}: train loss {train_loss:.4f}, val loss {history['val'][-1][1]:.4f}; "
              f"checkpoint written to {folder}", flush=True)
    return history


def train_main(argv: list[str]) -> int:
    args = train_parser().parse_args(argv)
    config = GPTConfig.from_preset(args.preset)
    try:
        check_torchrun_world_size(args.tp, args.pp, args.dp, args.cp)
        start = check_out(args.out, args.resume, args.overwrite)
        if args.batch_size is None:
            args.batch_size, note = default_batch_size(args.dp, 1 if args.pp == 1 else (
                args.microbatches or 2 * args.pp))
            if note and int(os.environ.get("RANK", 0)) == 0:
                print(note, flush=True)
        if start is not None:
            check_resume_flags(args.out, {k: getattr(args, k) for k in RESUME_FLAGS})
            if start >= args.iters:
                raise ValueError(f"--resume: the run in {args.out} is at step {start} already; "
                                 f"give --iters above {start} to train it further")
        check_pipeline_flags(args)
        check_fits(config, args.preset, int(os.environ.get("LOCAL_WORLD_SIZE",
                                                           args.tp * args.pp * args.dp * args.cp)))
        settings = train_settings(args)
        check_layout(config, args.tp, args.pp, args.dp, settings.batch_size, settings.schedule,
                     settings.num_microbatches, settings.num_chunks, args.cp, args.zero)
        data, _ = _train_data(args, settings)  # bad data fails here, before any rank starts
        if not args.data_path:
            check_token_data(data, config.block_size, config.vocab_size, str(corpus_path(CORPUS)),
                             CORPUS_FIX)
    except (FileNotFoundError, ValueError) as error:
        train_parser().error(str(error))
    return _run(_train_rank, args, args.tp, args.pp, args.dp, "train", args.cp)


def generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minimt generate", description="Stream text from a checkpoint written by "
        "`python -m minimt train` at any layout (greedy unless --do-sample).",
        epilog='example: python -m minimt generate --checkpoint runs/3d --prompt "ROMEO:" '
               "--max-new-tokens 100 --tp 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="directory written by train --out")
    parser.add_argument("--prompt", default="\n", help="text to continue")
    parser.add_argument("--max-new-tokens", type=cli_number(int, 1), default=100,
                        help="characters to generate")
    _mesh_options(parser)
    parser.add_argument("--do-sample", action="store_true",
                        help="sample instead of taking the most likely token")
    parser.add_argument("--temperature", type=cli_number(float, 0, low_open=True), default=1.0,
                        help="divide the logits by this before sampling")
    parser.add_argument("--top-k", type=cli_number(int, 0), default=None,
                        help="sample among the k most likely")
    parser.add_argument("--top-p", type=cli_number(float, 0, low_open=True, high=1), default=None,
                        help="sample among the most likely tokens holding probability p")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling (every rank "
                        "draws the same numbers, so tensor-parallel ranks pick the same tokens)")
    return parser


def _generate_rank(ctx, args) -> str:
    """One rank: the serial model from the checkpoint, this rank's tensor-parallel slice, then
    decode; rank 0 prints each character as it comes."""
    tokenizer, _ = char_dataset(CORPUS, byte_fallback=False)
    model = load_serial_model(args.checkpoint).float()
    if ctx.tp_size > 1:
        apply_tensor_parallel(model, ctx)
    model.to(ctx.device).eval()
    ids = torch.tensor([tokenizer.encode(args.prompt)], device=ctx.device)  # (1, T)
    text = args.prompt
    if ctx.rank == 0:
        print(args.prompt, end="", flush=True)
    torch.manual_seed(args.seed)  # the same draws on every rank, whatever building the model took
    for _ in range(args.max_new_tokens):  # one token at a time: the context slides past block_size
        window = ids[:, 1 - model.config.block_size:]                        # (1, < block_size)
        token = next(stream(model, window, 1, do_sample=args.do_sample,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p))
        ids = torch.cat((ids, token[:, None]), dim=1)                        # (1, T + 1)
        piece = tokenizer.decode(token.tolist())
        text += piece
        if ctx.rank == 0:
            print(piece, end="", flush=True)
    if ctx.rank == 0:
        print(flush=True)
    return text


def generate_main(argv: list[str]) -> int:
    args = generate_parser().parse_args(argv)
    try:
        check_torchrun_world_size(args.tp, 1, 1)
        meta, _, _ = read_checkpoint(args.checkpoint)
        check_layout(GPTConfig(**meta["config"]), args.tp, 1, 1, 1)
        tokenizer = char_dataset(CORPUS, byte_fallback=False)[0]
        try:
            tokenizer.encode(args.prompt)
        except ValueError as error:
            raise ValueError(f"--prompt: {str(error).split(';')[0]} (the model knows the "
                             f"characters of {CORPUS}); write the prompt with those") from None
        if not tokenizer.encode(args.prompt):
            raise ValueError("--prompt is empty: give at least one character to continue")
    except (FileNotFoundError, ValueError) as error:
        generate_parser().error(str(error))
    return _run(_generate_rank, args, args.tp, 1, 1, "generate")


class ProgressLines:
    """A stream for tqdm that turns each redraw ("\r" + bar) into a line of its own: a forked
    rank's output reaches the terminal through launch line by line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip("\n")
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _in_process(ctx) -> bool:
    """True for a one-process run without torchrun: no ranks forked, output goes straight out."""
    return ctx.world_size == 1 and ctx.backend is None


def _under_torchrun() -> bool:
    return all(v in os.environ for v in TORCHRUN_VARIABLES)


def _run(fn, args, tp: int, pp: int, dp: int, name: str, cp: int = 1) -> int:
    """fn(ctx, args) in this process for one rank (streamed output, a live progress bar), on
    forked ranks for a mesh, or on this process's rank under torchrun."""
    try:
        if tp * pp * dp * cp == 1 and not _under_torchrun():
            seed_everything(args.seed)
            device = "cuda" if args.backend != "gloo" and torch.cuda.is_available() else "cpu"
            fn(ParallelContext(device=device), args)
            return 0
        try:
            launch(fn, args, tp=tp, pp=pp, dp=dp, backend=args.backend, timeout_s=args.timeout_s,
                   seed=args.seed, stream_rank0=name == "generate", cp=cp)
        except ValueError as error:  # forked ranks: launch refused before starting any
            if _under_torchrun():
                raise
            print(f"python -m minimt {name}: error: --backend: {error}", file=sys.stderr)
            return 2
    except NonFiniteLoss as error:
        print(f"minimt {name} failed: {error}", file=sys.stderr)
        return 1
    except (RankError, LaunchTimeout) as error:
        clear = isinstance(error, RankError) and NonFiniteLoss.__name__ in error.traceback
        print(f"minimt {name} failed: {str(error).split(chr(10))[0] if clear else error}",
              file=sys.stderr)
        return 1
    return 0


COMMANDS = {"train": train_main, "generate": generate_main, "preprocess": preprocess_main,
            "eval": eval_main}
