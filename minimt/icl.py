"""In-context learning you can watch: a small GPT trained on a family of lookup-table tasks.

Each task is a fresh random table from NUM_KEYS keys to NUM_VALUES values; a prompt is k solved
pairs "key = value ;" of one task, then a query "key =". Nothing but the prompt says which
table it is, so zero-shot accuracy is chance (1/NUM_VALUES) and each shot can only help: a
query whose key appeared among the shots can be answered by copying (an induction head, Olsson
et al. 2022). `python -m minimt.icl --out DIR` trains the course's checkpoint with the Trainer.
"""
from __future__ import annotations

import argparse
import sys

import torch

from .config import GPTConfig
from .evaluate import score_batch
from .model import GPT, IGNORE_INDEX

NUM_KEYS, NUM_VALUES = 6, 4
EQ, SEP = NUM_KEYS + NUM_VALUES, NUM_KEYS + NUM_VALUES + 1   # token ids: keys, values, "=", ";"
MAX_SHOTS = 16
CONFIG = GPTConfig(vocab_size=SEP + 1, block_size=4 * MAX_SHOTS + 4, n_layer=2, n_head=2,
                   n_embd=64)
SHOTS = (0, 1, 4, 16)


def episode(generator: torch.Generator, k: int) -> tuple[list[int], int]:
    """(prompt ids: k solved pairs of one random table, then a query key and "="; the answer's
    value id)."""
    table = torch.randint(NUM_VALUES, (NUM_KEYS,), generator=generator) + NUM_KEYS  # (keys,)
    keys = torch.randint(NUM_KEYS, (k + 1,), generator=generator).tolist()
    prompt = [t for key in keys[:-1] for t in (key, EQ, int(table[key]), SEP)]
    return prompt + [keys[-1], EQ], int(table[keys[-1]])


def get_batch(split: str, batch_size: int, block_size: int, generator: torch.Generator):
    """Trainer's data: MAX_SHOTS + 1 pairs of a random table per row; only the values are
    targets (keys are random, nothing could predict them). x, y: (B, T)."""
    rows = []
    for _ in range(batch_size):
        prompt, answer = episode(generator, MAX_SHOTS)
        rows.append(prompt + [answer, SEP])
    ids = torch.tensor(rows)[:, :block_size + 1]                         # (B, T + 1)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[(y < NUM_KEYS) | (y >= EQ)] = IGNORE_INDEX                          # score the values only
    return x, y


def accuracy_by_shots(model, shots=SHOTS, n: int = 200, seed: int = 1) -> dict[int, float]:
    """Held-out accuracy (tables drawn from another seed) for each number of shots: the value
    with the highest log-likelihood, over all NUM_VALUES choices, as lm-eval's acc."""
    out = {}
    for k in shots:
        g = torch.Generator().manual_seed(seed * 1000 + k)
        episodes = [episode(g, k) for _ in range(n)]
        contexts = [p for p, _ in episodes for _ in range(NUM_VALUES)]
        choices = [[NUM_KEYS + v] for _ in episodes for v in range(NUM_VALUES)]
        scores = torch.tensor([s.logprob for s in score_batch(model, contexts, choices)])
        picked = scores.view(n, NUM_VALUES).argmax(-1) + NUM_KEYS                   # (n,)
        out[k] = (picked == torch.tensor([a for _, a in episodes])).float().mean().item()
    return out


def train(iters: int = 1500, seed: int = 0, progress: bool = False) -> GPT:
    """The course's in-context learner, trained with the Trainer from `seed`."""
    from .train import Trainer, TrainConfig

    torch.manual_seed(seed)
    model = GPT(CONFIG)
    Trainer(model, get_batch, TrainConfig(
        max_iters=iters, batch_size=32, learning_rate=3e-3, min_lr=3e-4, warmup_iters=50,
        eval_interval=iters, eval_iters=2, seed=seed, progress=progress)).train()
    return model.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimt.icl", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from .parallel import ParallelContext
    from .parallel.checkpoint import save_checkpoint

    model = train(args.iters, args.seed, progress=True)
    print("held-out accuracy by shots:", accuracy_by_shots(model))
    save_checkpoint(args.out, model, None, ParallelContext(), step=args.iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
