"""launch(fn, *args, tp, pp, dp): run `fn(ctx, *args)` on tp*pp*dp real processes, one per rank,
and return their results in rank order.

Ranks are forked, so `fn` may be defined in a notebook cell or inside a test, and a whole launch
of 2-4 ranks takes ~0.1 s (spawn would re-import torch in every child: ~1 s per rank). Each
rank prints through a pipe that the caller reads, so `[rank 1] ...` lines appear where the caller
prints (a notebook cell, pytest's capture). A failure anywhere ends the whole launch:
- an exception on a rank -> RankError naming the rank, with that rank's traceback;
- a rank that dies without one (os._exit, a signal) -> RankError with its exit code;
- a collective that some rank never joins -> gloo's own timeout error after `timeout_s`, or, if
  the stuck rank is not in a collective, LaunchTimeout `timeout_s` (+5 s) after the first rank
  finished, with the stuck ranks' Python stacks.
Afterwards no rank process, pipe or port is left, even after a failure; if the caller itself
dies (a restarted kernel), Linux kills its ranks.
Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR set) nothing is spawned: `fn` runs
on this process's rank only and the list holds only its result.
"""
from __future__ import annotations

import codecs
import ctypes
import faulthandler
import multiprocessing
import os
import pickle
import random
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import wait

import numpy.random  # imported here, once: importing it in every forked rank costs ~40 ms
import torch
import torch.distributed as dist

from .context import ParallelContext, _check_size

WATCHDOG_MARGIN_S = 5.0  # LaunchTimeout fires this long after gloo's own timeout would have
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")


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


@dataclass(frozen=True)
class _Spec:
    """What every rank needs to join the launch."""
    tp: int
    pp: int
    dp: int
    backend: str
    timeout_s: float
    seed: int
    store_port: int
    store_fd: int  # a listening socket on store_port, bound by the caller; rank 0 serves on it

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp


def launch(fn, *args, tp: int = 1, pp: int = 1, dp: int = 1, backend: str | None = None,
           timeout_s: float = 60, seed: int = 0) -> list:
    """Run fn(ctx, *args) on tp*pp*dp ranks; return the ranks' results in rank order.

    backend: None picks "nccl" when there is one GPU per rank (rank r on cuda:r), else "gloo".
    timeout_s: how long a rank may wait on its peers (rendezvous, each collective) before the
    launch fails; a long computation is fine. seed: every rank starts with torch.manual_seed(seed)
    (and random/numpy), the same on all ranks, so equal code draws equal numbers everywhere.
    Results are moved to the CPU and pickled back (tensors detached). Under torchrun nothing is
    forked: fn runs on this process's rank only and the list holds its result alone (a process
    group that launch initialised there is destroyed after a final barrier).
    """
    if not callable(fn):
        raise TypeError(f"launch needs a function fn(ctx, *args), got {type(fn).__name__}")
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp)):
        _check_size(name, value)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be a positive number of seconds")
    if all(name in os.environ for name in TORCHRUN_VARIABLES):
        return [_run_under_torchrun(fn, args, tp, pp, dp, backend, timeout_s, seed)]
    world_size = tp * pp * dp
    backend = _choose_backend(backend, world_size, fork=True)
    # Bind a free port now (no race with other programs) and let rank 0 serve the rendezvous
    # store on it. The caller must not run a store itself: forking while its server thread
    # holds a lock can hang a child.
    listener = socket.create_server(("127.0.0.1", 0))
    spec = _Spec(tp, pp, dp, backend, float(timeout_s), seed, listener.getsockname()[1],
                 listener.fileno())
    ranks: list[_RankProcess] = []
    try:
        for rank in range(world_size):
            ranks.append(_RankProcess(rank, fn, args, spec, ranks))
        listener.close()  # rank 0 holds its own copy
        return _supervise(ranks, spec)
    finally:
        listener.close()
        for r in ranks:
            r.close()


def _choose_backend(backend: str | None, world_size: int, fork: bool) -> str:
    gpus = torch.cuda.device_count()  # NVML-based: does not initialise CUDA in this process
    if backend is None:
        backend = "nccl" if gpus >= world_size and dist.is_nccl_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r}: choose 'gloo' (CPU) or 'nccl' (one GPU per rank)")
    if backend == "nccl" and gpus < world_size:
        raise ValueError(f"backend='nccl' needs one GPU per rank: {world_size} ranks but {gpus} "
                         f"GPU(s); use backend='gloo' or fewer ranks")
    if backend == "nccl" and fork and torch.cuda.is_initialized():
        raise RuntimeError("CUDA is already initialised in this process and forked ranks cannot "
                           "use it: call launch before any CUDA op (restart the kernel), run "
                           "under torchrun, or use backend='gloo'")
    return backend


def _run_under_torchrun(fn, args, tp, pp, dp, backend, timeout_s, seed):
    """torchrun already started one process per rank: join its group and run fn here only."""
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size != tp * pp * dp:
        raise ValueError(f"torchrun started WORLD_SIZE={world_size} processes but "
                         f"tp*pp*dp = {tp}*{pp}*{dp} = {tp * pp * dp}; make them equal "
                         f"(e.g. --nproc-per-node {tp * pp * dp})")
    owner = not dist.is_initialized()  # we create the process group, so we also destroy it
    if owner:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        backend = _choose_backend(backend, local_world_size, fork=False)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    _seed_everything(seed)
    result = fn(ParallelContext.from_distributed(tp, pp, dp), *args)
    if owner:  # wait for every rank, then tear down (exiting with live gloo threads aborts)
        dist.barrier()
        dist.destroy_process_group()
    return result


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ---------------------------------------------------------------------------- inside a rank
def _rank_main(rank: int, fn, args, spec: _Spec, conn, out_fd: int, err_fd: int,
               inherited: list, caller_pid: int) -> None:
    """Body of a forked rank: wire up output, join the group, run fn, send back its result."""
    _die_with_caller(caller_pid)
    for obj in inherited:  # the parent's ends of other ranks' pipes: keep EOFs working
        obj.close() if hasattr(obj, "close") else os.close(obj)
    if rank != 0:
        os.close(spec.store_fd)  # only rank 0 serves the store
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    sys.stdout = open(1, "w", buffering=1, errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)
    faulthandler.enable()  # a segfault prints the Python stack
    faulthandler.register(signal.SIGUSR1)  # the watchdog asks a stuck rank where it is
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)  # before any torch op: forked OpenMP pools hang (MEASURED.md)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # the parent already started its inter-op pool; harmless
        pass
    try:
        if spec.backend == "nccl":
            torch.cuda.set_device(rank)
        store = dist.TCPStore("127.0.0.1", spec.store_port, spec.world_size, is_master=rank == 0,
                              timeout=timedelta(seconds=spec.timeout_s), wait_for_workers=False,
                              master_listen_fd=spec.store_fd if rank == 0 else None)
        dist.init_process_group(spec.backend, store=store, rank=rank, world_size=spec.world_size,
                                timeout=timedelta(seconds=spec.timeout_s))
        _seed_everything(spec.seed)
        ctx = ParallelContext.from_distributed(spec.tp, spec.pp, spec.dp)
        payload = pickle.dumps(("ok", _to_cpu(fn(ctx, *args))))
    except BaseException as exc:
        sys.stdout.flush()  # the caller prints this rank's last lines before the error
        sys.stderr.flush()
        conn.send_bytes(pickle.dumps(("error", time.time(), *_explain(exc, spec.timeout_s))))
        os._exit(1)
    conn.send_bytes(payload)
    try:  # stay alive until every rank is done: a peer may still be talking to us
        conn.recv_bytes()
    except EOFError:
        pass
    dist.destroy_process_group()


def _die_with_caller(caller_pid: int) -> None:
    """Linux: the kernel kills this rank when the caller dies (e.g. a restarted notebook kernel),
    so a stuck rank never outlives it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != caller_pid:  # it died before we asked
        os._exit(1)


def _explain(exc: BaseException, timeout_s: float) -> tuple[str, str]:
    """(one-line summary, traceback without the launcher's frame) of a rank's exception.
    The summary names the torch.distributed op and the line that called it, if there is one."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    for i, frame in enumerate(frames):
        if frame.filename.endswith("distributed_c10d.py"):
            callers = [f for f in frames[:i] if os.sep + "torch" + os.sep not in f.filename
                       and not f.filename.endswith(os.path.join("parallel", "comm.py"))]
            at = f" called at {callers[-1].filename}:{callers[-1].lineno}" if callers else ""
            where = f" in torch.distributed.{frame.name}{at}"
            break
    summary = f"{type(exc).__name__}{where}: {exc}"
    if "timed out" in str(exc).lower():
        summary += (f"\n(no matching call from the other ranks within timeout_s={timeout_s:g} s:"
                    f" a rank skipped this operation or called another one)")
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None
    return summary, "".join(traceback.format_exception(type(exc), exc, tb))


def _to_cpu(value):
    """Tensors (also inside lists, tuples and dicts) detached and on the CPU, ready to pickle."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------- in the caller
class _RankProcess:
    """One forked rank seen from the caller: its process, result pipe and output pipes."""

    def __init__(self, rank: int, fn, args, spec: _Spec, started: list["_RankProcess"]):
        self.rank = rank
        self.conn, child_conn = multiprocessing.Pipe(duplex=True)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        inherited = [self.conn, out_r, err_r]
        for other in started:
            inherited += [other.conn, *other.streams]
        self.process = multiprocessing.get_context("fork").Process(
            target=_rank_main, name=f"minimt-rank-{rank}",
            args=(rank, fn, args, spec, child_conn, out_w, err_w, inherited, os.getpid()))
        self.process.start()
        child_conn.close()
        os.close(out_w)
        os.close(err_w)
        self.streams = {out_r: "stdout", err_r: "stderr"}  # fd -> which stream of the caller
        self.decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in self.streams}
        self.partial = {fd: "" for fd in self.streams}
        self.captured: list[str] | None = None  # stderr lines kept while the watchdog listens

    def forward(self, fd: int) -> bool:
        """Copy what the rank wrote on `fd` to the caller's stream, line by line, prefixed.
        Returns False at end of file."""
        data = os.read(fd, 65536)
        text = self.partial[fd] + self.decoders[fd].decode(data, final=not data)
        lines = text.split("\n")
        self.partial[fd] = lines.pop() if data else ""
        if data == b"" and lines and lines[-1] == "":
            lines.pop()
        stream = getattr(sys, self.streams[fd])
        for line in lines:
            stream.write(f"[rank {self.rank}] {line}\n")
        if self.captured is not None and self.streams[fd] == "stderr":
            self.captured += lines
        stream.flush()
        return bool(data)

    def close(self) -> None:
        """Kill the rank if it is still alive and close every pipe end we hold."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.process.close()
        self.conn.close()
        for fd in self.streams:
            os.close(fd)


def _supervise(ranks: list[_RankProcess], spec: _Spec) -> list:
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


def _receive(r: _RankProcess, results: dict, failures: list) -> None:
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
        if r.process.is_alive():
            r.process.kill()
            r.process.join()
    _drain(outputs, 2.0)  # every writer is gone: the pipes end soon (unless fn left children)


def _drain(outputs: dict, seconds: float) -> None:
    """Forward what the ranks write for up to `seconds`, or until all their pipes are closed."""
    end = time.monotonic() + seconds
    while outputs and time.monotonic() < end:
        for fd in wait(list(outputs), max(0.0, end - time.monotonic())):
            if not outputs[fd].forward(fd):
                del outputs[fd]


def _raise_timeout(ranks, results: dict, outputs: dict, spec: _Spec) -> None:
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
        end = next((i for i, line in enumerate(lines) if "in _rank_main" in line), len(lines))
        stacks += f"\nPython stack of rank {r.rank}:\n" + "\n".join(lines[:end]) + "\n"
    raise LaunchTimeout(
        f"rank(s) {[r.rank for r in stuck]} did not finish within timeout_s={spec.timeout_s:g} s "
        f"(+{WATCHDOG_MARGIN_S:g} s) after rank(s) {sorted(results)} returned: they wait in a "
        f"collective or recv that the others never called, or loop.\n{stacks}",
        [r.rank for r in stuck])
