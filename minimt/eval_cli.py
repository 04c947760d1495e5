"""`python -m minimt eval`: lm-evaluation-harness's own evaluator on a minimt checkpoint.

The model is lm-eval's `minimt` (minimt/lm_eval_model.py); the course's tasks (minimt/eval_tasks.py)
are always found, more with --include-path as lm-eval does. Prints lm-eval's table, then one JSON
line {"results": {task: {metric: value}}} with lm-eval's metric names. With --tp N the model is
split over N tensor-parallel ranks (each gathers the vocabulary slices of its logits).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .checks import cli_number


def eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minimt eval", description="Evaluate a checkpoint of `python -m minimt "
        "train` with lm-evaluation-harness (the model registered as `minimt`).",
        epilog="example: python -m minimt eval --checkpoint runs/3d --tasks "
               "minimt_lambada_shakespeare,minimt_next_line --num-fewshot 1 --limit 20")
    parser.add_argument("--checkpoint", required=True, help="directory written by train --out")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names (the "
                        "course's: minimt_lambada_shakespeare, minimt_next_line, "
                        "minimt_shakespeare_ppl)")
    parser.add_argument("--include-path", default=None, help="a folder of lm-eval task YAML")
    parser.add_argument("--num-fewshot", type=cli_number(int, 0), default=None,
                        help="solved examples before each question (default: the task's, or 0)")
    parser.add_argument("--limit", type=cli_number(int, 1), default=None,
                        help="evaluate only the first N documents of each task")
    parser.add_argument("--tp", type=cli_number(int, 1), default=1,
                        help="tensor-parallel ranks (must divide n_head)")
    parser.add_argument("--batch-size", type=cli_number(int, 1), default=16)
    parser.add_argument("--bootstrap-iters", type=cli_number(int, 0), default=1000,
                        help="lm-eval's bootstrap for standard errors (0: none)")
    parser.add_argument("--timeout-s", type=cli_number(float, 0, low_open=True), default=300.0)
    return parser


def flat_results(results: dict) -> dict:
    """lm-eval's results {task: {"acc,none": v, "alias": ...}} -> {task: {"acc": v}}, numbers
    only (a standard error lm-eval could not compute is left out)."""
    out = {}
    for task, metrics in results["results"].items():
        out[task] = {key.split(",")[0]: value for key, value in metrics.items()
                     if isinstance(value, (int, float)) and not isinstance(value, bool)
                     and math.isfinite(value) and key != "sample_len"}
    return out


def run_lm_eval(model, tasks: list[str], include_path=None, num_fewshot=None, limit=None,
                batch_size: int = 16, bootstrap_iters: int = 1000, course_dir=None) -> dict:
    """lm_eval.simple_evaluate on `model` (a minimt GPT) over the course's tasks (written into
    course_dir, default .cache/eval_tasks, unless given) and any under include_path; returns
    lm-eval's results dict."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from .eval_tasks import course_tasks
    from .lm_eval_model import MinimtLM

    paths = [str(course_dir or course_tasks())] + ([str(include_path)] if include_path else [])
    manager = TaskManager(include_path=paths, include_defaults=False)
    return simple_evaluate(model=MinimtLM(model=model, batch_size=batch_size), tasks=tasks,
                           num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                           bootstrap_iters=bootstrap_iters, log_samples=False,
                           verbosity="ERROR")


def _eval_rank(ctx, args):
    """One rank: the checkpoint's model (this rank's tensor-parallel slice), lm-eval on it;
    rank 0 returns (lm-eval's table, the flat results), the others None."""
    from lm_eval.utils import make_table

    from .parallel.checkpoint import load_serial_model
    from .parallel.tensor import apply_tensor_parallel

    model = load_serial_model(args.checkpoint).float()
    if ctx.tp_size > 1:
        apply_tensor_parallel(model, ctx)
    results = run_lm_eval(model.to(ctx.device), args.tasks.split(","), args.include_path,
                          args.num_fewshot, args.limit, args.batch_size, args.bootstrap_iters,
                          args.course_dir)
    return (make_table(results), flat_results(results)) if ctx.rank == 0 else None


def _evaluate(args) -> tuple[str, dict] | None:
    """_eval_rank here (one rank), on forked ranks (--tp N), or on this rank under torchrun."""
    from .parallel import ParallelContext, launch
    from .parallel.launch import TORCHRUN_VARIABLES

    if args.tp == 1 and not all(v in os.environ for v in TORCHRUN_VARIABLES):
        return _eval_rank(ParallelContext(), args)
    return launch(_eval_rank, args, tp=args.tp, timeout_s=args.timeout_s)[0]


def eval_main(argv: list[str]) -> int:
    """python -m minimt eval --checkpoint DIR --tasks NAME[,NAME] ... (see --help)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from .config import GPTConfig
    from .parallel import LaunchTimeout, RankError
    from .eval_tasks import course_tasks
    from .parallel.checkpoint import read_checkpoint
    from .parallel.layout import check_layout

    parser = eval_parser()
    args = parser.parse_args(argv)
    try:
        meta, _, _ = read_checkpoint(args.checkpoint)
        check_layout(GPTConfig(**meta["config"]), args.tp, 1, 1, 1)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if args.include_path and not os.path.isdir(args.include_path):
        parser.error(f"--include-path {args.include_path}: no such folder of task YAML")
    args.course_dir = course_tasks()  # written once, before any rank reads it
    try:
        result = _evaluate(args)
    except (KeyError, RankError) as error:
        if "is not a registered task" in str(error):  # lm-eval's answer to an unknown name
            parser.error(f"--tasks {args.tasks}: a task lm-eval does not know; the course's are "
                         f"minimt_lambada_shakespeare, minimt_next_line, minimt_shakespeare_ppl "
                         f"(more with --include-path)")
        if isinstance(error, KeyError):
            raise
        print(f"minimt eval failed: {error}", file=sys.stderr)
        return 1
    except LaunchTimeout as error:
        print(f"minimt eval failed: {error}", file=sys.stderr)
        return 1
    if result is not None:  # rank 0's: lm-eval's table, then one JSON line
        table, flat = result
        print(table, flush=True)
        print(json.dumps({"results": flat}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(eval_main(sys.argv[1:]))
