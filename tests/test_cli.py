"""`python -m minimt train` and `generate`: the same flags train the same model at every layout
(serial, 2 x 2 x 2 forked, torchrun), generation reads a checkpoint of any layout, and the help
and the errors say what to do."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minimt.__main__ import main
from minimt.cli import generate_parser, train_parser
from minimt.parallel.checkpoint import load_serial_model

REPO_ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--iters", "3", "--batch-size", "8", "--eval-iters", "1", "--seed", "5"]
# Float rounding differs with the layout (sums split over ranks), and Adam's first steps divide
# the gradient by its own magnitude, so a weight with a near-zero gradient can move by a visibly
# different amount: measured gaps are 1e-6..2e-5 while the weights move by ~3e-3 (3 steps of lr).
TOLERANCE = 1e-4


def largest_gap(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    """The serial run (in this process), its checkpoint and the initial model."""
    out = tmp_path_factory.mktemp("serial")
    assert main(["train", *FLAGS, "--out", str(out)]) == 0
    return out


def test_serial_and_3d_runs_end_with_the_same_weights(serial_run, tmp_path, capsys):
    assert main(["train", *FLAGS, "--tp", "2", "--pp", "2", "--dp", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr()
    assert "[rank 0] training nanogpt-shakespeare-cpu (0.80M parameters) on tp=2 pp=2 dp=2" \
        in printed.out
    assert "[rank 1]" not in printed.out + printed.err  # only rank 0 prints, one progress bar
    serial, mesh = load_serial_model(serial_run), load_serial_model(tmp_path)
    assert largest_gap(serial, mesh) < TOLERANCE
    torch.manual_seed(5)
    from minimt import GPT, GPTConfig
    assert largest_gap(serial, GPT(GPTConfig.from_preset("nanogpt-shakespeare-cpu"))) > 1e-3


def test_zero_interleaved_run_ends_with_the_serial_weights(serial_run, tmp_path):
    assert main(["train", *FLAGS, "--pp", "2", "--dp", "2", "--zero", "--schedule", "interleaved",
                 "--microbatches", "2", "--out", str(tmp_path)]) == 0
    assert largest_gap(load_serial_model(serial_run), load_serial_model(tmp_path)) < TOLERANCE


def test_torchrun_trains_the_same_model(serial_run, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "minimt", "train", *FLAGS, "--tp", "2", "--out", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "on tp=2 pp=1 dp=1 (gloo, cpu)" in run.stdout
    assert len(re.findall(r"checkpoint written", run.stdout)) == 1  # rank 0 only
    assert largest_gap(load_serial_model(serial_run), load_serial_model(tmp_path)) < TOLERANCE


def test_generate_streams_the_same_text_serial_and_tensor_parallel(serial_run, capsys):
    words = ["generate", "--checkpoint", str(serial_run), "--prompt", "ROMEO:",
             "--max-new-tokens", "70"]  # longer than the 64-token context: it slides
    assert main(words) == 0
    serial = capsys.readouterr().out
    assert main(words + ["--tp", "2"]) == 0
    parallel = capsys.readouterr().out
    assert serial.startswith("ROMEO:") and len(serial) == len("ROMEO:") + 70 + 1
    assert parallel == serial  # rank 0's text as it comes: no "[rank 0] " prefix
    assert main(words + ["--do-sample", "--top-k", "5", "--seed", "1"]) == 0
    sampled = capsys.readouterr().out
    assert main(words + ["--do-sample", "--top-k", "5", "--seed", "1", "--tp", "2"]) == 0
    assert capsys.readouterr().out == sampled != serial


@pytest.mark.parametrize("flags,message", [
    (["--tp", "3"], "n_head=4 is not divisible by --tp"),
    (["--dp", "3"], "batch size=8 is not divisible by --dp"),
    (["--pp", "2", "--dp", "2", "--microbatches", "3"], "not divisible into 3 pipeline"),
    (["--pp", "8"], "8 pipeline stages for n_layer=4"),
])
def test_a_layout_that_does_not_divide_is_refused_before_any_rank_starts(flags, message, tmp_path,
                                                                         capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *FLAGS, *flags, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_generate_names_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", str(tmp_path)])
    assert "holds no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("parser", [train_parser(), generate_parser()])
def test_help_explains_every_flag(parser):
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
    assert "example" in parser.format_help()


def test_top_level_help_lists_the_commands_and_the_demos(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "train " in text and "generate " in text and "tp-train" in text


def test_a_16_bit_run_without_zero_saves_its_fp32_masters_and_adam_state(tmp_path):
    """bf16 weights with MixedPrecisionOptimizer (no ZeRO): the checkpoint holds the optimizer's
    fp32 master weights and moments, not only the 16-bit weights, so the run can be resumed."""
    from minimt.parallel.checkpoint import read_checkpoint
    assert main(["train", "--iters", "2", "--batch-size", "4", "--eval-iters", "1",
                 "--dtype", "bf16", "--out", str(tmp_path)]) == 0
    meta, weights, state = read_checkpoint(tmp_path)
    assert meta["dtype"] == "bfloat16" and meta["optimizer_steps"] == 2
    assert state is not None and state.keys() == weights.keys()
    for name, tensor in weights.items():
        assert state[name]["master"].dtype == torch.float32, name
        assert state[name]["exp_avg"].shape == tensor.shape, name
        assert torch.equal(state[name]["master"].to(torch.bfloat16), tensor), name


def test_zero3_run_ends_with_the_serial_weights(serial_run, tmp_path):
    assert main(["train", *FLAGS, "--dp", "2", "--zero", "3", "--out", str(tmp_path)]) == 0
    assert largest_gap(load_serial_model(serial_run), load_serial_model(tmp_path)) < TOLERANCE


def test_zero_alone_is_stage_1_and_a_bad_stage_is_refused(capsys):
    assert train_parser().parse_args([*FLAGS, "--out", "x", "--zero"]).zero == 1
    assert train_parser().parse_args([*FLAGS, "--out", "x"]).zero == 0
    with pytest.raises(SystemExit):
        train_parser().parse_args([*FLAGS, "--out", "x", "--zero", "4"])
    assert "invalid choice: 4" in capsys.readouterr().err
