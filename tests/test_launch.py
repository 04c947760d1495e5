"""The launcher on real forked gloo ranks: results in rank order, functions defined anywhere,
rank-prefixed output, fast clear failures (exception, hang, silent death), nothing left behind,
clear errors for bad sizes, and the torchrun path through `python -m minimt`."""
import io
import multiprocessing
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from minimt.__main__ import main
from minimt.parallel import LaunchTimeout, RankError, all_reduce, launch


def test_results_in_rank_order_from_a_local_closure():
    offset = 100  # captured from this test's frame: fn is not importable, fork makes it work

    def rank_and_world(ctx, extra):
        value = torch.tensor([float(ctx.rank)])
        dist.all_reduce(value)
        return ctx.rank + offset + extra, value.item(), torch.get_num_threads()

    results = launch(rank_and_world, 0.5, tp=2, pp=2)
    assert results == [(r + 100.5, 6.0, 1) for r in range(4)]  # one thread per rank


def test_tensors_come_back_detached_on_cpu_and_seeds_repeat():
    def draw(ctx):
        return {"sample": torch.randn(3, requires_grad=True) * 2}

    first, second = launch(draw, tp=2, seed=7), launch(draw, tp=2, seed=7)
    for result in first + second:
        assert not result["sample"].requires_grad and result["sample"].device.type == "cpu"
        assert torch.equal(result["sample"], first[0]["sample"])  # every rank, every launch
    torch.manual_seed(7)
    assert torch.equal(first[0]["sample"], torch.randn(3) * 2)
    assert not torch.equal(launch(draw, tp=1, seed=8)[0]["sample"], first[0]["sample"])


def test_output_is_prefixed_with_the_rank(capfd):
    def talk(ctx):
        print(f"hello from {ctx.rank}")
        print(f"warning from {ctx.rank}", file=sys.stderr)
        print("no newline at the end", end="")

    launch(talk, tp=2)
    out, err = capfd.readouterr()
    for r in range(2):
        assert f"[rank {r}] hello from {r}\n" in out
        assert f"[rank {r}] warning from {r}\n" in err
        assert f"[rank {r}] no newline at the end\n" in out


def test_output_reaches_a_stdout_without_fileno(monkeypatch):
    """A Jupyter kernel's sys.stdout is a stream object with no file descriptor."""
    sink = io.StringIO()
    monkeypatch.setattr(sys, "stdout", sink)
    launch(lambda ctx: print("to the cell"), tp=2)
    assert sink.getvalue().count("to the cell") == 2 and "[rank 1] to the cell" in sink.getvalue()


def test_ranks_run_after_the_caller_used_many_threads():
    """Fork after OpenMP hangs unless each rank uses one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.randn(512, 512) @ torch.randn(512, 512)  # starts the caller's OpenMP pool
        assert launch(lambda ctx: float((torch.randn(256, 256) @ torch.randn(256, 256)).sum() * 0),
                      tp=2, timeout_s=20) == [0.0, 0.0]
    finally:
        torch.set_num_threads(threads)


def test_exception_on_rank_1_ends_the_launch_fast():
    def fail_on_rank_1(ctx):
        if ctx.rank == 1:
            raise ValueError("rank one cannot continue")
        dist.barrier()  # rank 0 would wait here forever without the launcher

    start = time.monotonic()
    with pytest.raises(RankError, match="rank 1 raised ValueError: rank one cannot continue") as info:
        launch(fail_on_rank_1, tp=2, timeout_s=30)
    assert time.monotonic() - start < 5
    assert info.value.rank == 1 and info.value.exitcode is None
    assert "in fail_on_rank_1" in info.value.traceback and "in fail_on_rank_1" in str(info.value)


def test_a_collective_some_rank_skips_times_out_naming_the_op():
    def skip_on_rank_1(ctx):
        if ctx.rank == 0:
            all_reduce(torch.ones(4), ctx, "world")  # minimt's counted wrapper

    start = time.monotonic()
    with pytest.raises(RankError, match="(?s)rank 0 raised RuntimeError in torch.distributed."
                                        r"all_reduce called at \S*test_launch.py:\d+: .*Timed out"
                       ) as info:
        launch(skip_on_rank_1, tp=2, timeout_s=3)
    assert 3 <= time.monotonic() - start < 8
    assert info.value.rank == 0 and "timeout_s=3" in str(info.value)


def test_a_rank_stuck_outside_collectives_hits_the_watchdog():
    def stuck_on_rank_1(ctx):
        if ctx.rank == 1:
            time.sleep(600)

    start = time.monotonic()
    with pytest.raises(LaunchTimeout, match=r"rank\(s\) \[1\] did not finish") as info:
        launch(stuck_on_rank_1, tp=2, timeout_s=2)
    assert 2 <= time.monotonic() - start < 12
    assert info.value.ranks == [1]
    assert "in stuck_on_rank_1" in str(info.value)  # its Python stack shows where it waits


def test_a_rank_dying_silently_is_reported_with_its_exit_code():
    def exit_on_rank_1(ctx):
        if ctx.rank == 1:
            os._exit(3)
        dist.barrier()

    start = time.monotonic()
    with pytest.raises(RankError, match="rank 1 died with exit code 3") as info:
        launch(exit_on_rank_1, tp=2, timeout_s=30)
    assert time.monotonic() - start < 5
    assert info.value.rank == 1 and info.value.exitcode == 3


def test_an_unpicklable_result_is_a_clear_error():
    with pytest.raises(RankError, match="rank 0 raised .*(pickle|Pickl)"):
        launch(lambda ctx: (lambda: None), tp=1)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_ten_launches_leave_no_processes_or_file_descriptors():
    launch(lambda ctx: None, tp=2)  # warm-up: first use may open library files
    before = open_fds()
    for i in range(10):
        assert launch(lambda ctx, i: ctx.rank * i, i, tp=2, pp=2 if i % 2 else 1) == \
            [r * i for r in range(4 if i % 2 else 2)]
    with pytest.raises(RankError):  # failures clean up too
        launch(lambda ctx: 1 / 0, tp=2)
    assert multiprocessing.active_children() == []
    with pytest.raises(ChildProcessError):  # no child at all, not even a zombie
        os.waitpid(-1, os.WNOHANG)
    assert open_fds() == before  # sockets (the store's port) and pipes are all closed


def process_alive(pid):
    """True if pid runs (a zombie, dead but not yet reaped by its new parent, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_ranks_die_with_their_caller(tmp_path):
    """A restarted notebook kernel must not leave its ranks running."""
    script = f"""
import os, signal, time
from minimt.parallel import launch
def rank(ctx):
    open(os.path.join({str(tmp_path)!r}, f"rank{{ctx.rank}}.tmp"), "w").write(str(os.getpid()))
    os.rename(os.path.join({str(tmp_path)!r}, f"rank{{ctx.rank}}.tmp"),
              os.path.join({str(tmp_path)!r}, f"rank{{ctx.rank}}"))
    while ctx.rank == 0 and len([f for f in os.listdir({str(tmp_path)!r}) if "tmp" not in f]) < 2:
        time.sleep(0.01)
    if ctx.rank == 0:
        os.kill(os.getppid(), signal.SIGKILL)  # the caller dies without cleaning up
    time.sleep(60)
launch(rank, tp=2)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == -9, done.stderr
    pids = [int((tmp_path / f"rank{r}").read_text()) for r in range(2)]
    deadline = time.monotonic() + 5
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(pid) for pid in pids)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tp=0), "tp=0 must be a positive integer"),
    (dict(pp=-2), "pp=-2 must be a positive integer"),
    (dict(dp=2.0), "dp=2.0 must be a positive integer"),
    (dict(timeout_s=0), "timeout_s=0 must be a positive number"),
    (dict(backend="mpi"), "backend='mpi': choose 'gloo'"),
])
def test_bad_arguments_raise_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        launch(lambda ctx: None, **kwargs)


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has GPUs for nccl")
def test_nccl_without_gpus_says_so():
    with pytest.raises(ValueError, match="backend='nccl' needs one GPU per rank"):
        launch(lambda ctx: None, tp=2, backend="nccl")


def test_torchrun_world_size_must_match_the_mesh(monkeypatch):
    for name, value in dict(RANK="0", WORLD_SIZE="4", LOCAL_RANK="0",
                            MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="WORLD_SIZE=4 processes but tp\\*pp\\*dp = 2\\*1\\*1 = 2"):
        launch(lambda ctx: None, tp=2)
    assert not dist.is_initialized()


def test_python_m_minimt_forks_its_own_ranks(capfd):
    assert main(["allreduce", "--tp", "2", "--dp", "2"]) == 0
    out = capfd.readouterr().out
    assert out.count("sum of ranks = 6 (expected 6) ok") == 4  # world group, every rank
    assert "[rank 3] all_reduce over dp    ranks [1, 3]: sum of ranks = 4 (expected 4) ok" in out


def test_torchrun_runs_the_allreduce_demo():
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "minimt", "allreduce"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for r in range(2):
        assert f"[rank {r}] all_reduce over world ranks [0, 1]: sum of ranks = 1 (expected 1) ok" \
            in done.stdout
