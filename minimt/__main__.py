"""`python -m minimt train|generate ...` (see minimt/cli.py, `--help` of each) and
`python -m minimt <demo> [--tp N] [--pp N] [--dp N] [demo options]`: run a demo on every rank.

Under torchrun each process is one rank, e.g.
    torchrun --standalone --nproc-per-node 4 -m minimt allreduce --tp 4
Run directly (`python -m minimt allreduce --tp 2`), minimt forks the ranks itself with `launch`.
Sizes left out: pp=dp=1 and tp fills the rest (torchrun's WORLD_SIZE, or 2 without torchrun).
Demos live in minimt/demos.py (see there to add one).
"""
from __future__ import annotations

import argparse
import os
import sys

from .checks import cli_number
from .cli import COMMANDS
from .demos import DEMO_OPTIONS, DEMOS
from .parallel import LaunchTimeout, RankError, launch
from .parallel.launch import TORCHRUN_VARIABLES


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    listing = "\n".join(f"  {name:<12}{(fn.__doc__ or '').strip().splitlines()[0]}"
                        for name, fn in sorted(DEMOS.items()))
    commands = ("commands (python -m minimt COMMAND --help):\n"
                "  train       train the course's GPT on any (tp, pp, dp) layout, write a checkpoint\n"
                "  generate    stream text from a checkpoint of any layout\n"
                "  preprocess  tokenize a corpus into Megatron's .bin/.idx indexed dataset\n"
                "  eval        score a checkpoint on lm-evaluation-harness tasks\n")
    parser = argparse.ArgumentParser(prog="python -m minimt", epilog=f"{commands}demos:\n{listing}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Run a minimt demo on every rank.")
    parser.add_argument("demo", choices=sorted(DEMOS), help="which demo to run")
    parser.add_argument("--tp", type=cli_number(int, 1), default=None, help="tensor-parallel size")
    parser.add_argument("--pp", type=cli_number(int, 1), default=1, help="pipeline-parallel size")
    parser.add_argument("--dp", type=cli_number(int, 1), default=1, help="data-parallel size")
    parser.add_argument("--backend", choices=("gloo", "nccl"), default=None,
                        help="default: nccl with one GPU per rank, else gloo")
    parser.add_argument("--timeout-s", type=cli_number(float, 0, low_open=True), default=60.0,
                        help="how long a rank may wait on its peers")
    parser.add_argument("--seed", type=int, default=0)
    if not argv or (argv[0] not in DEMOS and not argv[0].startswith("-")):
        import difflib
        close = difflib.get_close_matches(argv[0], [*COMMANDS, *DEMOS], 1) if argv else []
        parser.error(f"{f'unknown command {argv[0]!r}' if argv else 'no command given'}: "
                     f"{f'did you mean {close[0]!r}? ' if close else ''}choose one of "
                     f"{', '.join(COMMANDS)}, or a demo ({', '.join(sorted(DEMOS))})")
    args, rest = parser.parse_known_args(argv)
    if args.demo in DEMO_OPTIONS:  # a bad demo option is a usage error here, not one per rank
        DEMO_OPTIONS[args.demo].parse_args(rest)
    tp = args.tp
    if tp is None:
        world_size = int(os.environ.get("WORLD_SIZE", 2 * args.pp * args.dp))
        tp = max(1, world_size // (args.pp * args.dp))
    try:
        launch(DEMOS[args.demo], rest, tp=tp, pp=args.pp, dp=args.dp, backend=args.backend,
               timeout_s=args.timeout_s, seed=args.seed)
    except (RankError, LaunchTimeout) as error:
        print(f"minimt {args.demo} failed: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # forked ranks: launch refused the layout before starting any
        if all(name in os.environ for name in TORCHRUN_VARIABLES):
            raise  # under torchrun the demo itself ran here: its error is not a usage error
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
