"""What runs inside one rank (forked, or spawned where fork is unsafe): join the process group, run
fn(ctx, *args), send the result (or the exception, summarised) back to the caller through a pipe.
Used by minimt.parallel.launch."""
from __future__ import annotations

import ctypes
import faulthandler
import os
import pickle
import random
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing import reduction

import numpy.random  # imported here, once: importing it in every forked rank costs ~40 ms
import torch
import torch.distributed as dist

from .context import ParallelContext


@dataclass(frozen=True)
class RankSpec:
    """What every rank needs to join the launch."""
    tp: int
    pp: int
    dp: int
    backend: str
    timeout_s: float
    seed: int
    store_port: int
    store_fd: int  # a listening socket on store_port, bound by the caller; rank 0 serves on it
    stream_rank0: bool = False  # rank 0's stdout goes out as written, without "[rank 0] "
    cp: int = 1    # context-parallel size

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp * self.cp


def seed_everything(seed: int) -> None:
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rank_main(rank: int, fn, args, spec: RankSpec, conn, out_fd: int, err_fd: int,
               inherited: list, caller_pid: int) -> None:
    """Body of a forked rank: wire up output, join the group, run fn, send back its result."""
    os.setpgid(0, 0)  # lead a process group, so the caller can end what fn starts with the rank
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
    torch.set_num_threads(1)  # before any torch op: a fork of a multi-threaded OpenMP pool hangs
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
        seed_everything(spec.seed)
        ctx = ParallelContext.from_distributed(spec.tp, spec.pp, spec.dp, cp=spec.cp)
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


def spawned_rank_main(rank: int, payload: bytes, spec: RankSpec, conn, out_fd: int, err_fd: int,
                      caller_pid: int) -> None:
    """Body of a spawned rank: a fresh interpreter, so fn and args arrive pickled by value
    (cloudpickle: a notebook cell's function too); an unpickling error becomes a RankError."""
    def run_fn(ctx):
        fn, args = pickle.loads(payload)
        return fn(ctx, *args)

    rank_main(rank, run_fn, (), spec, conn, out_fd, err_fd, [], caller_pid)


class PassedFd:
    """A file descriptor handed to a spawned rank: unpickled there, it is the child's own copy."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _detach, (reduction.DupFd(self.fd),)  # only valid while a Process is being started


def _detach(dup_fd) -> int:
    return dup_fd.detach()


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
