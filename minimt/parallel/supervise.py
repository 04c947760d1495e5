"""The caller's side of a launch: one RankProcess per rank (forked or spawned), and `supervise`,
which forwards the ranks' output (see rank_output), collects their results, and turns the first
failure or a hang into RankError / LaunchTimeout, leaving no process (nor one a rank started) or
pipe behind."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import time
from dataclasses import replace
from multiprocessing.connection import wait

import cloudpickle

from .rank_main import PassedFd, RankSpec, rank_main, spawned_rank_main
from .rank_output import RankOutput

WATCHDOG_MARGIN_S = 5.0  # LaunchTimeout fires this long after gloo's own timeout would have


class RankError(RuntimeError):
    """A rank raised or died. `rank`, `exitcode` (None if it raised) and `traceback` (its text)."""

    def __init__(self, message: str, rank: int, exitcode: int | None = None, traceback: str = ""):
        super().__init__(message)
        self.rank, self.exitcode, self.traceback = rank, exitcode, traceback


class LaunchTimeout(RuntimeError):
    """Some ranks did not finish in time; `ranks` lists them."""

    def __init__(self, message: str, ranks: list[int]):
        super().__init__(message)
        self.ranks = ranks


class RankProcess:
    """One rank seen from the caller: its process, result pipe and output pipes."""

    def __init__(self, rank: int, fn, args, spec: RankSpec, started: list["RankProcess"],
                 start_method: str = "fork"):
        self.rank = rank
        self.conn, child_conn = multiprocessing.Pipe(duplex=True)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        inherited = [self.conn, out_r, err_r]
        for other in started:
            inherited += [other.conn, *other.streams]
        if start_method == "fork":
            target, rank_args = rank_main, (rank, fn, args, spec, child_conn, out_w, err_w,
                                            inherited, os.getpid())
        else:  # a fresh interpreter: fn by value, and its own copies of the descriptors it needs
            spawn_spec = replace(spec, store_fd=PassedFd(spec.store_fd))
            target, rank_args = spawned_rank_main, (rank, cloudpickle.dumps((fn, args)), spawn_spec,
                                                    child_conn, PassedFd(out_w), PassedFd(err_w),
                                                    os.getpid())
        self.process = multiprocessing.get_context(start_method).Process(
            target=target, name=f"minimt-rank-{rank}", args=rank_args)
        self.process.start()
        self.pid = self.process.pid
        try:  # the rank leads its own process group (it also asks): its children die with it
            os.setpgid(self.pid, self.pid)
        except OSError:  # it already did, or already exited
            pass
        child_conn.close()
        os.close(out_w)
        os.close(err_w)
        self.streams = {out_r: "stdout", err_r: "stderr"}  # fd -> which stream of the caller
        self.outputs = {fd: RankOutput(f"[rank {rank}] ", raw=spec.stream_rank0 and rank == 0
                                       and self.streams[fd] == "stdout") for fd in self.streams}
        self.captured: list[str] | None = None  # stderr lines kept while the watchdog listens

    def forward(self, fd: int) -> bool:
        """Copy what the rank wrote on `fd` to the caller's stream, prefixed (see RankOutput).
        Returns False at end of file."""
        data = os.read(fd, 65536)
        text, lines = self.outputs[fd].feed(data)
        if text:
            stream = getattr(sys, self.streams[fd])
            stream.write(text)
            stream.flush()
        if self.captured is not None and self.streams[fd] == "stderr":
            self.captured += lines
        return bool(data)

    def kill(self) -> None:
        """SIGKILL the rank's whole process group: the rank and any process its fn started."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # the group is gone already
            pass
        if self.process.is_alive():  # killed before it made its own group
            self.process.kill()

    def close(self) -> None:
        """Kill the rank and whatever it started, and close every pipe end we hold."""
        self.kill()
        self.process.join()
        self.process.close()
        self.conn.close()
        for fd in self.streams:
            os.close(fd)


def supervise(ranks: list[RankProcess], spec: RankSpec) -> list:
    """Forward output and collect results until all ranks returned, one failed, or time ran out."""
    results: dict[int, object] = {}
    failures: list[tuple[float, RankError]] = []
    outputs = {fd: r for r in ranks for fd in r.streams}
    conns = {r.conn: r for r in ranks}
    sentinels = {r.process.sentinel: r for r in ranks}
    first_done = None
    while len(results) < len(ranks) and not failures:
        deadline = None if first_done is None else first_done + spec.timeout_s + WATCHDOG_MARGIN_S
        ready = wait([*outputs, *conns, *sentinels],
                     None if deadline is None else max(0.0, deadline - time.monotonic()))
        if not ready:
            _raise_timeout(ranks, results, outputs, spec)
        for fd in [obj for obj in ready if obj in outputs]:
            if not outputs[fd].forward(fd):
                del outputs[fd]
        for conn in [obj for obj in ready if obj in conns]:
            _receive(conns.pop(conn), results, failures)
        for sentinel in [obj for obj in ready if obj in sentinels]:
            r = sentinels.pop(sentinel)
            if r.conn in conns and r.conn.poll():  # its last message arrived with its death
                _receive(conns.pop(r.conn), results, failures)
            if r.rank not in results and all(f.rank != r.rank for _, f in failures):
                r.process.join(5.0)  # the sentinel can fire a moment before the exit status
                code = r.process.exitcode
                reason = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                failures.append((time.time(), RankError(
                    f"rank {r.rank} died with {reason} without raising a Python exception "
                    f"(os._exit, a crash, or killed)", r.rank, exitcode=code)))
        if results and first_done is None:
            first_done = time.monotonic()
    if failures:
        _stop_and_drain(ranks, outputs)
        raise min(failures, key=lambda f: f[0])[1]
    for r in ranks:  # everyone is done: let them exit
        try:
            r.conn.send_bytes(b"exit")
        except OSError:  # it is already gone; its exit does not matter any more
            pass
    _stop_and_drain(ranks, outputs, grace_s=spec.timeout_s)
    return [results[r.rank] for r in ranks]


def _receive(r: RankProcess, results: dict, failures: list) -> None:
    try:
        message = pickle.loads(r.conn.recv_bytes())
    except EOFError:  # died before sending; its sentinel reports it
        return
    if message[0] == "ok":
        results[r.rank] = message[1]
        return
    _, when, summary, tb = message
    failures.append((when, RankError(f"rank {r.rank} raised {summary}\n\nTraceback on rank "
                                     f"{r.rank}:\n{tb}", r.rank, traceback=tb)))


def _stop_and_drain(ranks, outputs: dict, grace_s: float = 0.0) -> None:
    """Wait up to grace_s for the ranks to exit, kill the rest, then print what they wrote last."""
    deadline = time.monotonic() + grace_s
    for r in ranks:
        r.process.join(max(0.0, deadline - time.monotonic()))
        r.kill()  # also the processes its fn started, which may hold its pipes
        r.process.join()
    _drain(outputs, 2.0)  # every writer is gone: the pipes end soon


def _drain(outputs: dict, seconds: float) -> None:
    """Forward what the ranks write for up to `seconds`, or until all their pipes are closed."""
    end = time.monotonic() + seconds
    while outputs and time.monotonic() < end:
        for fd in wait(list(outputs), max(0.0, end - time.monotonic())):
            if not outputs[fd].forward(fd):
                del outputs[fd]


def _raise_timeout(ranks, results: dict, outputs: dict, spec: RankSpec) -> None:
    """Ask the stuck ranks for their Python stacks (printed above), kill all, raise."""
    stuck = [r for r in ranks if r.rank not in results]
    for r in stuck:
        if r.process.is_alive():
            r.captured = []
            os.kill(r.process.pid, signal.SIGUSR1)  # faulthandler prints its Python stack
    _drain(outputs, 1.0)
    _stop_and_drain(ranks, outputs)
    stacks = ""
    for r in stuck:  # faulthandler's dump, down to the launcher's frame
        lines = r.captured or ["(no answer)"]
        end = next((i for i, line in enumerate(lines) if "in rank_main" in line), len(lines))
        stacks += f"\nPython stack of rank {r.rank}:\n" + "\n".join(lines[:end]) + "\n"
    raise LaunchTimeout(
        f"rank(s) {[r.rank for r in stuck]} did not finish within timeout_s={spec.timeout_s:g} s "
        f"(+{WATCHDOG_MARGIN_S:g} s) after rank(s) {sorted(results)} returned: they wait in a "
        f"collective or recv that the others never called, or loop.\n{stacks}",
        [r.rank for r in stuck])
