"""The launcher under heavy output: forwarding is linear even without newlines, a tqdm bar inside a
rank is shown while it runs, and processes that a rank's function started end with the launch."""
import os
import subprocess
import sys
import time

import pytest

from minimt.parallel import RankError, launch
from minimt.parallel.rank_output import RankOutput
from test_launch import process_alive

CHUNK = 65536  # what the caller reads from a rank's pipe at a time


def feed_all(output, *chunks):
    """The text RankOutput prints for these reads followed by end of file, and the ended lines."""
    texts, lines = [], []
    for data in (*chunks, b""):
        text, ended = output.feed(data)
        texts.append(text)
        lines += ended
    return "".join(texts), lines


def test_lines_are_prefixed_and_a_last_line_without_newline_is_kept():
    text, lines = feed_all(RankOutput("[rank 1] "), b"one\ntw", b"o\r\nthr", b"ee")
    assert text == "[rank 1] one\n[rank 1] two\n[rank 1] three\n"
    assert lines == ["one", "two", "three"]


def test_windows_newline_split_between_two_reads_loses_nothing():
    text, _ = feed_all(RankOutput("[rank 0] "), b"first\r", b"\nsecond\r\n")
    assert text == "[rank 0] first\n[rank 0] second\n"


def test_a_carriage_return_bar_is_redrawn_at_every_read():
    output = RankOutput("[rank 0] ")
    assert output.feed(b"\r 10%|#  |") == ("\r[rank 0]  10%|#  |", [])
    assert output.feed(b"\r 20%|## ") == ("\r[rank 0]  20%|## ", [])
    assert output.feed(b"|") == ("\r[rank 0]  20%|## |", [])   # the rest of the same state
    assert output.feed(b"\r100%|###|\n") == ("\r[rank 0] 100%|###|\n", ["100%|###|"])
    assert output.feed(b"done\n") == ("[rank 0] done\n", ["done"])


def test_utf8_split_between_reads_is_decoded_whole():
    data = "naïve → ok\n".encode()
    text, _ = feed_all(RankOutput("[rank 0] "), data[:3], data[3:9], data[9:])
    assert text == "[rank 0] naïve → ok\n"


def test_forwarding_a_long_line_is_linear():
    """40 MB without a newline in 64 KiB reads: joining the line at every read (the old way)
    copies ~12 GB and took minutes at 80 MB per rank; kept as pieces it is one copy."""
    output = RankOutput("[rank 0] ")
    chunk = b"x" * CHUNK
    start = time.perf_counter()
    for _ in range(40_000_000 // CHUNK):
        assert output.feed(chunk) == ("", [])
    text, lines = output.feed(b"")
    seconds = time.perf_counter() - start
    assert len(lines[0]) == 40_000_000 // CHUNK * CHUNK and text.endswith("x\n")
    assert seconds < 5.0, f"{seconds:.1f} s to forward 40 MB: not linear"


class Recorder:
    """A caller's stream that creates `flag` when it receives `wanted`."""

    def __init__(self, wanted, flag):
        self.wanted, self.flag, self.text = wanted, flag, ""

    def write(self, text):
        self.text += text
        if self.wanted in self.text and not os.path.exists(self.flag):
            open(self.flag, "w").close()

    def flush(self):
        pass


def _wait_for(path, seconds):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the caller never showed the bar's state ({path} not created)")
        time.sleep(0.01)


def test_a_tqdm_bar_in_a_rank_is_shown_while_it_runs(tmp_path, monkeypatch):
    """The rank waits until the caller has printed its bar at 1/3 before it goes on, so the test
    fails (TimeoutError on the rank) if the bar only arrives when it closes."""
    from tqdm import tqdm
    flag = str(tmp_path / "seen")
    recorder = Recorder("1/3", flag)
    monkeypatch.setattr(sys, "stderr", recorder)

    def run_bar(ctx):
        bar = tqdm(total=3, file=sys.stderr, mininterval=0, ascii=True, disable=ctx.rank != 0)
        bar.update(1)
        if ctx.rank == 0:
            _wait_for(flag, 20)
        bar.update(2)
        bar.close()

    launch(run_bar, tp=2, timeout_s=30)
    assert "\r[rank 0]" in recorder.text and "3/3" in recorder.text
    assert recorder.text.endswith("\n")


def test_heavy_output_without_newlines_arrives_whole(monkeypatch):
    class Counter:
        chars = 0

        def write(self, text):
            Counter.chars += len(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Counter())

    def write_lots(ctx):
        for _ in range(8_000_000 // CHUNK):
            sys.stdout.write("y" * CHUNK)
        sys.stdout.flush()

    start = time.perf_counter()
    launch(write_lots, tp=2, timeout_s=60)
    seconds = time.perf_counter() - start
    line = len("[rank 0] ") + 8_000_000 // CHUNK * CHUNK + 1
    assert Counter.chars == 2 * line
    assert seconds < 20.0, f"{seconds:.1f} s to forward 2 x 8 MB"


def _start_child_then(ctx, folder, fail):
    """Start a long `sleep`, note its pid, then fail (rank 1) or return."""
    child = subprocess.Popen(["sleep", "60"])
    with open(os.path.join(folder, f"child{ctx.rank}"), "w") as f:
        f.write(str(child.pid))
    if fail and ctx.rank == 1:
        raise RuntimeError("rank 1 fails after starting a child")
    return child.pid


@pytest.mark.parametrize("fail", [True, False])
def test_processes_started_by_a_rank_end_with_the_launch(tmp_path, fail):
    if fail:
        with pytest.raises(RankError, match="rank 1 fails after starting a child"):
            launch(_start_child_then, str(tmp_path), fail, tp=2, timeout_s=30)
    else:
        launch(_start_child_then, str(tmp_path), fail, tp=2, timeout_s=30)
    pids = [int((tmp_path / f"child{r}").read_text()) for r in range(2)
            if (tmp_path / f"child{r}").exists()]
    assert pids  # at least the failing rank started its child
    deadline = time.monotonic() + 5
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(pid) for pid in pids), "a rank's child outlived the launch"
