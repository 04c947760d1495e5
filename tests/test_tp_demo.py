"""The tp-train demo trains a tensor-parallel GPT whose loss equals the serial model's at every
step, both through minimt's launcher and as `torchrun ... -m minimt tp-train`."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minimt.demos import DEMOS
from minimt.parallel import RankError, launch
from minimt.parallel.tp_demo import DEMO_CONFIG, tp_train, train_steps

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_tp_train_is_registered():
    assert DEMOS["tp-train"] is tp_train


def test_launch_losses_equal_serial_on_every_rank():
    serial = train_steps(None, DEMO_CONFIG, steps=4, verbose=False)
    for rank, losses in enumerate(launch(tp_train, ["--steps", "4"], tp=2, timeout_s=60)):
        assert len(losses) == 4
        for step, (got, expected) in enumerate(zip(losses, serial)):
            assert abs(got - expected) < 1e-5, f"rank {rank} step {step}: {got} vs {expected}"
    assert serial[-1] < serial[0], "the loss should fall over 4 AdamW steps"


def test_refuses_pipeline_or_data_parallel_sizes():
    with pytest.raises(RankError, match="tensor parallelism only"):
        launch(tp_train, [], tp=1, pp=2, timeout_s=30)


def test_torchrun_two_processes():
    steps = 5
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "minimt", "tp-train", "--steps", str(steps)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    printed = [float(v) for v in re.findall(r"step +\d+ +loss (\d+\.\d+)", run.stdout)]
    assert len(printed) == steps, run.stdout  # printed once per step, by tp rank 0 only
    serial = train_steps(None, DEMO_CONFIG, steps=steps, verbose=False)
    for got, expected in zip(printed, serial):
        assert abs(got - expected) < 1e-4  # printed with 4 decimals
    assert "max |loss difference|" in run.stdout
