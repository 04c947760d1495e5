"""In-context learning you can watch: a small GPT trained on a family of lookup-table tasks.

Each task is a fresh random table from NUM_KEYS keys to NUM_VALUES values; a prompt is k solved
pairs of one table, each written as one token meaning "key k has value v", then a query key.
Nothing but the prompt says which table it is, so zero-shot accuracy is chance (1/NUM_VALUES) and
each shot can only help: a query whose key appears among the shots is answered by attending to
that pair's token. `python -m minimt.icl --out DIR` trains the course's checkpoint with the
Trainer and records its loss at every step (DIR/trajectory.json), so a test can retrace the run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from .config import GPTConfig
from .model import GPT, IGNORE_INDEX

NUM_KEYS, NUM_VALUES = 6, 4
FIRST_PAIR = NUM_KEYS + NUM_VALUES          # token ids: keys, values, then one per (key, value)
PAD = FIRST_PAIR + NUM_KEYS * NUM_VALUES    # fills the training rows after the answer
MAX_SHOTS = 16
CONFIG = GPTConfig(vocab_size=PAD + 1, block_size=MAX_SHOTS + 1, n_layer=2, n_head=2, n_embd=64)
SHOTS = (0, 1, 4, 16)
ITERS = 300
# The cosine learning-rate decay spans DECAY_ITERS steps whatever --iters is, so a run of N
# steps is exactly the first N steps of any longer run with the same seed.
DECAY_ITERS = 1000
TRAIN_SETTINGS = dict(batch_size=128, learning_rate=3e-3, min_lr=3e-4, warmup_iters=50,
                      lr_decay_iters=DECAY_ITERS)


def show_prompt(prompt: list[int]) -> str:
    """A prompt's tokens for reading: each pair token as "key->value", the query as "key ->?"."""
    def word(t):
        if t >= FIRST_PAIR:
            key, value = divmod(t - FIRST_PAIR, NUM_VALUES)
            return f"{key}->{value + NUM_KEYS}"
        return f"{t} ->?"
    return "  ".join(word(t) for t in prompt)


def episodes(generator: torch.Generator, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n episodes, each of its own random table: (prompts (n, k + 1): k solved pairs then a
    query key; answers (n,): the query's value id)."""
    tables = torch.randint(NUM_VALUES, (n, NUM_KEYS), generator=generator)   # (n, keys)
    keys = torch.randint(NUM_KEYS, (n, k + 1), generator=generator)         # (n, k+1)
    values = tables.gather(1, keys)                                          # (n, k+1)
    pairs = FIRST_PAIR + keys[:, :-1] * NUM_VALUES + values[:, :-1]          # (n, k)
    return torch.cat([pairs, keys[:, -1:]], 1), values[:, -1] + NUM_KEYS


def episode(generator: torch.Generator, k: int) -> tuple[list[int], int]:
    """One episode as (prompt token ids, the answer's value id)."""
    prompts, answers = episodes(generator, k, 1)
    return prompts[0].tolist(), int(answers[0])


def get_batch(split: str, batch_size: int, block_size: int, generator: torch.Generator):
    """Trainer's data: row b is an episode of k_b shots (k_b uniform in 0..MAX_SHOTS), its
    answer, then padding; the answer is the only target. x, y: (B, MAX_SHOTS + 1)."""
    shots = torch.randint(MAX_SHOTS + 1, (batch_size,), generator=generator)       # (B,)
    prompts, answers = episodes(generator, MAX_SHOTS, batch_size)
    full = torch.cat([prompts, answers[:, None]], 1)                   # (B, MAX_SHOTS + 2)
    # row b keeps the last k_b pairs: position j reads full[j + MAX_SHOTS - k_b]
    source = torch.arange(MAX_SHOTS + 2) + (MAX_SHOTS - shots)[:, None]       # (B, S + 2)
    rows = full.gather(1, source.clamp(max=MAX_SHOTS + 1))
    rows[source > MAX_SHOTS + 1] = PAD
    x = rows[:, :-1][:, :block_size]                                   # (B, T)
    y = torch.full_like(x, IGNORE_INDEX)
    y[torch.arange(batch_size), shots] = answers                       # the query predicts it
    return x, y


@torch.no_grad()
def choice_logprobs(model, prompts: torch.Tensor) -> torch.Tensor:
    """prompts (n, L) -> (n, NUM_VALUES): the log-likelihood of each value as the one-token
    continuation of its prompt, what lm-eval's loglikelihood returns for each choice (all prompts
    of a k have one length, so one forward pass scores them all)."""
    logits, _ = model(prompts)                                            # (n, L, V)
    return torch.log_softmax(logits[:, -1].float(), -1)[:, NUM_KEYS:FIRST_PAIR]   # (n, values)


def accuracy_by_shots(model, shots=SHOTS, n: int = 1000, seed: int = 1) -> dict[int, float]:
    """Held-out accuracy (tables drawn from another seed) for each number of shots: the value
    with the highest log-likelihood among all NUM_VALUES choices, as lm-eval's acc."""
    out = {}
    for k in shots:
        prompts, answers = episodes(torch.Generator().manual_seed(seed * 1000 + k), k, n)
        picked = choice_logprobs(model, prompts).argmax(-1) + NUM_KEYS    # (n,)
        out[k] = (picked == answers).float().mean().item()
    return out


def standard_error(accuracy: float, n: int) -> float:
    """The binomial standard error of an accuracy measured on n independent episodes."""
    return math.sqrt(accuracy * (1 - accuracy) / n)


def copying_ideal(k: int) -> float:
    """Accuracy of a reader that copies the query's value when its key is among the k shots and
    guesses otherwise: P(seen) + P(unseen) / NUM_VALUES."""
    seen = 1 - (1 - 1 / NUM_KEYS) ** k
    return seen + (1 - seen) / NUM_VALUES


def trainer(iters: int, seed: int = 0, progress: bool = False):
    """The Trainer of the course's in-context learner (a new GPT from `seed`), before any step."""
    from .train import Trainer, TrainConfig

    torch.manual_seed(seed)
    return Trainer(GPT(CONFIG), get_batch, TrainConfig(
        max_iters=iters, eval_interval=iters, eval_iters=2, seed=seed, progress=progress,
        **TRAIN_SETTINGS))


def train(iters: int, seed: int = 0, progress: bool = False) -> tuple[GPT, list[float]]:
    """(the in-context learner after `iters` steps from `seed`, its training loss at each step)."""
    run = trainer(iters, seed, progress)
    history = run.train(evaluate=False)
    return run.model.eval(), [loss for _, loss in history["train"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimt.icl", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--iters", type=int, default=ITERS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.iters <= DECAY_ITERS:
        parser.error(f"--iters {args.iters}: choose 1..{DECAY_ITERS} (the learning-rate decay "
                     f"spans {DECAY_ITERS} steps)")
    from .parallel import ParallelContext
    from .parallel.checkpoint import save_checkpoint

    model, losses = train(args.iters, args.seed, progress=True)
    curve = accuracy_by_shots(model)
    print("held-out accuracy by shots:", curve)
    save_checkpoint(args.out, model, None, ParallelContext(), step=args.iters)
    record = {"seed": args.seed, "iters": args.iters, "train_loss": losses,
              "accuracy_by_shots": curve}
    (Path(args.out) / "trajectory.json").write_text(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
