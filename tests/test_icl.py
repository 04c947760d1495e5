"""The in-context learner of notebook 10. The shipped checkpoint's held-out accuracy rises with
every number of shots (0, 1, 4, 16) by more than the measurement's noise; the training script,
rerun from its seed, retraces the loss recorded at every step when the checkpoint was made, and
its first RETRACED_STEPS steps (a third of the run) already give a rising curve."""
import json
import math
from pathlib import Path

import pytest
import torch

from minimt.evaluate import score_batch
from minimt.icl import (NUM_KEYS, NUM_VALUES, SHOTS, accuracy_by_shots, choice_logprobs,
                        episodes, standard_error, train)
from minimt.parallel.checkpoint import load_serial_model, read_checkpoint

CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "icl_checkpoint"
RECORD = json.loads((CHECKPOINT / "trajectory.json").read_text())
HELD_OUT = 1000        # episodes per number of shots
RETRACED_STEPS = 100


def assert_rising_curve(curve, n, sigmas=3):
    """Each step 0 -> 1 -> 4 -> 16 shots gains more than `sigmas` standard errors of the
    difference of two accuracies measured on n episodes each."""
    for fewer, more in zip(SHOTS, SHOTS[1:]):
        se = math.hypot(standard_error(curve[fewer], n), standard_error(curve[more], n))
        assert curve[more] - curve[fewer] > sigmas * se, (fewer, more, curve)


def test_shipped_checkpoint_learns_in_context():
    meta, _, _ = read_checkpoint(CHECKPOINT)
    assert sum(f.stat().st_size for f in CHECKPOINT.rglob("*") if f.is_file()) < 5 * 2**20
    assert meta["step"] == RECORD["iters"] == len(RECORD["train_loss"])
    curve = accuracy_by_shots(load_serial_model(CHECKPOINT).eval(), n=HELD_OUT)
    assert abs(curve[0] - 1 / NUM_VALUES) < 3 * standard_error(1 / NUM_VALUES, HELD_OUT), curve
    assert_rising_curve(curve, HELD_OUT)
    assert curve[16] > 0.9, curve                       # the copying ideal is 0.959
    recorded = {int(k): v for k, v in RECORD["accuracy_by_shots"].items()}
    assert curve == pytest.approx(recorded, abs=0.01)   # the weights the record was made with


@pytest.fixture
def one_thread():
    """Tiny matmuls: one intra-op thread is several times faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_script_retraces_the_recorded_run_and_already_learns_in_context(one_thread):
    model, losses = train(RETRACED_STEPS, seed=RECORD["seed"])
    # float rounding may differ between CPUs (kernels, threads): equal to 1e-4, not bit for bit
    assert losses == pytest.approx(RECORD["train_loss"][:RETRACED_STEPS], rel=1e-4, abs=1e-5)
    assert_rising_curve(accuracy_by_shots(model, n=HELD_OUT), HELD_OUT, sigmas=2)


def test_choice_logprobs_equal_score_batch():
    """The one-pass scorer of accuracy_by_shots equals scoring each choice as lm-eval does."""
    model = load_serial_model(CHECKPOINT).eval()
    prompts, _ = episodes(torch.Generator().manual_seed(3), 4, 5)               # (5, 5)
    contexts = [p for p in prompts.tolist() for _ in range(NUM_VALUES)]
    choices = [[NUM_KEYS + v] for _ in range(5) for v in range(NUM_VALUES)]
    expected = torch.tensor([s.logprob for s in score_batch(model, contexts, choices)])
    assert torch.allclose(choice_logprobs(model, prompts).flatten(), expected, atol=1e-5)
