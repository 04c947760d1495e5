"""The in-context learner of notebook 10: retrained from its seed, held-out accuracy rises with
every number of shots (0, 1, 4, 16), from chance to well above it; the shipped checkpoint too."""
from pathlib import Path

import pytest

from minimt.icl import NUM_VALUES, SHOTS, accuracy_by_shots, train
from minimt.parallel.checkpoint import load_serial_model, read_checkpoint

CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "icl_checkpoint"


def assert_rising_curve(curve):
    zero, one, four, sixteen = (curve[k] for k in SHOTS)
    assert abs(zero - 1 / NUM_VALUES) < 0.1, curve                # zero-shot: chance
    assert one > zero + 0.05 and four > one + 0.05, curve         # each shot helps
    assert min(four, sixteen) > 0.4, curve                        # far above chance


def test_retrained_learner_and_shipped_checkpoint_learn_in_context():
    meta, _, _ = read_checkpoint(CHECKPOINT)
    assert sum(f.stat().st_size for f in CHECKPOINT.rglob("*") if f.is_file()) < 5 * 2**20
    assert_rising_curve(accuracy_by_shots(load_serial_model(CHECKPOINT).eval(), n=200))
    retrained = train(iters=meta["step"], seed=0)   # the script's seed and length
    assert_rising_curve(accuracy_by_shots(retrained, n=200))
