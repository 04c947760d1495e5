"""The launcher's spawn path (macOS's default; MINIMT_START_METHOD=spawn forces it on Linux): a
function defined in a notebook cell travels by value, output is forwarded with the rank prefix,
failures are reported as with fork, and nothing is left behind.

Each test runs in its own Python process: spawning starts multiprocessing's resource tracker, a
child that lives as long as its parent and would otherwise count as a leftover process in
test_launch.py's clean-up checks."""
import os
import subprocess
import sys
import textwrap

import nbformat
import pytest
from nbclient import NotebookClient

from minimt.parallel.launch import _choose_start_method


def run_with_spawn(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with MINIMT_START_METHOD=spawn; fail on any error."""
    env = {**os.environ, "MINIMT_START_METHOD": "spawn"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def test_the_start_method_comes_from_the_argument_the_environment_or_the_platform(monkeypatch):
    monkeypatch.delenv("MINIMT_START_METHOD", raising=False)
    assert _choose_start_method(None) == "fork" and _choose_start_method("spawn") == "spawn"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert _choose_start_method(None) == "spawn"
    monkeypatch.setenv("MINIMT_START_METHOD", "fork")
    assert _choose_start_method(None) == "fork"
    monkeypatch.setenv("MINIMT_START_METHOD", "forkserver")
    with pytest.raises(ValueError, match="choose 'fork'"):
        _choose_start_method(None)
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(RuntimeError, match="WSL"):
        _choose_start_method(None)


def test_a_notebook_cell_function_runs_on_spawned_ranks():
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(textwrap.dedent("""\
        import torch
        import torch.distributed as dist
        from minimt.parallel import launch

        def cell_fn(ctx, scale):          # lives in the kernel's __main__: spawn cannot import it
            t = torch.tensor([float(ctx.rank + 1)])
            dist.all_reduce(t)
            print(f"hello from {ctx.rank}")
            return scale * t.item()

        results = launch(cell_fn, 10, tp=2, start_method="spawn")
        assert results == [30.0, 30.0], results
        """))]
    NotebookClient(notebook, timeout=180, kernel_name="python3").execute()
    printed = "".join(out.get("text", "") for out in notebook.cells[0].outputs)
    assert "[rank 0] hello from 0\n" in printed and "[rank 1] hello from 1\n" in printed


def test_spawned_ranks_forward_output_and_return_results_in_rank_order():
    done = run_with_spawn("""
        import sys
        import torch
        from minimt.parallel import launch

        offset = 100
        def talk(ctx, scale):             # a closure over `offset`, shipped by value
            print(f"hello from {ctx.rank}")
            print(f"warning from {ctx.rank}", file=sys.stderr)
            print("no newline at the end", end="")
            return torch.tensor([offset + scale * ctx.rank])

        results = launch(talk, 2.0, tp=2)
        assert [float(r) for r in results] == [100.0, 102.0], results
        """)
    for r in range(2):
        assert f"[rank {r}] hello from {r}\n" in done.stdout
        assert f"[rank {r}] warning from {r}\n" in done.stderr
        assert f"[rank {r}] no newline at the end\n" in done.stdout


def test_spawned_ranks_report_faults_and_leave_nothing_behind():
    done = run_with_spawn("""
        import multiprocessing, os, time
        import pytest
        import torch.distributed as dist
        from minimt.parallel import RankError, launch

        def children():   # processes started by this one, except multiprocessing's resource tracker
            pids = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                    cmdline = open(f"/proc/{pid}/cmdline").read()
                except FileNotFoundError:
                    continue
                if int(stat[1]) == os.getpid() and "resource_tracker" not in cmdline:
                    pids.append(pid)
            return pids

        launch(lambda ctx: None, tp=2)    # warm-up: starts the resource tracker
        fds = len(os.listdir("/proc/self/fd"))

        def fail_on_rank_1(ctx):
            if ctx.rank == 1:
                raise ValueError("rank one cannot continue")
            dist.barrier()
        start = time.monotonic()
        with pytest.raises(RankError, match="rank 1 raised ValueError: rank one cannot") as info:
            launch(fail_on_rank_1, tp=2, timeout_s=30)
        assert time.monotonic() - start < 15
        assert "in fail_on_rank_1" in info.value.traceback

        def exit_on_rank_1(ctx):
            if ctx.rank == 1:
                os._exit(3)
            dist.barrier()
        with pytest.raises(RankError, match="rank 1 died with exit code 3") as info:
            launch(exit_on_rank_1, tp=2, timeout_s=30)
        assert info.value.exitcode == 3

        assert multiprocessing.active_children() == [] and children() == []
        assert len(os.listdir("/proc/self/fd")) == fds
        print("faults reported, nothing left")
        """)
    assert "faults reported, nothing left" in done.stdout
