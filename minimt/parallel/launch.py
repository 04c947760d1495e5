"""launch(fn, *args, tp, pp, dp): run `fn(ctx, *args)` on tp*pp*dp real processes, one per rank,
and return their results in rank order.

On Linux ranks are forked, so `fn` may be defined in a notebook cell or inside a test, and a whole
launch of 2-4 ranks takes ~0.1 s. On macOS, where forking a process that has used system
frameworks is unsafe, ranks are spawned (fresh interpreters, ~1 s per rank to import torch) and
`fn` travels by value with cloudpickle, so a notebook-cell function works there too; set
MINIMT_START_METHOD=spawn (or pass start_method="spawn") to get the same on Linux. Each
rank prints through a pipe that the caller reads, so `[rank 1] ...` lines appear where the caller
prints (a notebook cell, pytest's capture); a tqdm bar is redrawn as it moves (give it to one rank:
`tqdm(..., disable=ctx.rank != 0)`). A failure anywhere ends the whole launch:
- an exception on a rank -> RankError naming the rank, with that rank's traceback;
- a rank that dies without one (os._exit, a signal) -> RankError with its exit code;
- a collective that some rank never joins -> gloo's own timeout error after `timeout_s`, or, if
  the stuck rank is not in a collective, LaunchTimeout `timeout_s` (+5 s) after the first rank
  finished, with the stuck ranks' Python stacks.
Afterwards no rank process, pipe or port is left, even after a failure, nor any process that fn
started (each rank leads a process group, ended whole); if the caller itself dies (a restarted
kernel), Linux kills its ranks.
Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR set) nothing is spawned: `fn` runs
on this process's rank only and the list holds only its result.
"""
from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta

import cloudpickle
import torch
import torch.distributed as dist

from .context import ParallelContext, _check_size
from .rank_main import RankSpec, seed_everything
from .supervise import LaunchTimeout, RankError, RankProcess, supervise

__all__ = ["launch", "RankError", "LaunchTimeout"]
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
START_METHOD_VARIABLE = "MINIMT_START_METHOD"


def launch(fn, *args, tp: int = 1, pp: int = 1, dp: int = 1, backend: str | None = None,
           timeout_s: float = 60, seed: int = 0, start_method: str | None = None,
           stream_rank0: bool = False, cp: int = 1) -> list:
    """Run fn(ctx, *args) on tp*pp*dp*cp ranks; return the ranks' results in rank order.

    backend: None picks "nccl" when there is one GPU per rank (rank r on cuda:r), else "gloo".
    timeout_s: how long a rank may wait on its peers (rendezvous, each collective) before the
    launch fails; a long computation is fine. seed: every rank starts with torch.manual_seed(seed)
    (and random/numpy), the same on all ranks, so equal code draws equal numbers everywhere.
    Results are moved to the CPU and pickled back (tensors detached). Under torchrun nothing is
    forked: fn runs on this process's rank only and the list holds its result alone (a process
    group that launch initialised there is destroyed after a final barrier).
    start_method: "fork" or "spawn"; None reads MINIMT_START_METHOD, else forks except on macOS.
    stream_rank0: rank 0's stdout reaches the caller's as written, partial lines too and without
    "[rank 0] " (a program whose rank 0 prints its result, e.g. streamed text).
    """
    if not callable(fn):
        raise TypeError(f"launch needs a function fn(ctx, *args), got {type(fn).__name__}")
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp), ("cp", cp)):
        _check_size(name, value)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be a positive number of seconds")
    if all(name in os.environ for name in TORCHRUN_VARIABLES):
        return [_run_under_torchrun(fn, args, tp, pp, dp, backend, timeout_s, seed, cp)]
    world_size = tp * pp * dp * cp
    start_method = _choose_start_method(start_method)
    backend = _choose_backend(backend, world_size, fork=start_method == "fork")
    if start_method == "spawn":
        _check_picklable(fn, args)
    else:  # an optimizer's first step imports torch._dynamo (~1.5 s): once here, not in every rank
        import torch._dynamo  # noqa: F401
    # Bind a free port now (no race with other programs) and let rank 0 serve the rendezvous
    # store on it. The caller must not run a store itself: forking while its server thread
    # holds a lock can hang a child.
    listener = socket.create_server(("127.0.0.1", 0))
    spec = RankSpec(tp, pp, dp, backend, float(timeout_s), seed, listener.getsockname()[1],
                    listener.fileno(), stream_rank0, cp)
    ranks: list[RankProcess] = []
    try:
        for rank in range(world_size):
            ranks.append(RankProcess(rank, fn, args, spec, ranks, start_method))
        listener.close()  # rank 0 holds its own copy
        return supervise(ranks, spec)
    finally:
        listener.close()
        for r in ranks:
            r.close()


def _check_picklable(fn, args) -> None:
    """Spawned ranks get fn and args by value: say which one cloudpickle cannot send."""
    for what, value in (("fn", fn), *((f"argument {i + 1}", a) for i, a in enumerate(args))):
        try:
            cloudpickle.dumps(value)
        except Exception as error:
            raise TypeError(f"launch with start_method='spawn' sends fn and its arguments to "
                            f"fresh interpreters by value (cloudpickle), and {what} cannot be "
                            f"pickled ({type(error).__name__}: {error}); pass plain data (numbers, "
                            f"strings, tensors) and build the rest inside fn, or use "
                            f"start_method='fork' (Linux)") from None


def _choose_start_method(start_method: str | None) -> str:
    """fork where it is safe (Linux); spawn on macOS; native Windows is refused with advice."""
    if sys.platform == "win32":
        raise RuntimeError("launch cannot start ranks on native Windows (its output forwarding "
                           "uses POSIX pipes): run the course in WSL (Windows Subsystem for "
                           "Linux), where it works as on Linux")
    start_method = start_method or os.environ.get(START_METHOD_VARIABLE) or (
        "spawn" if sys.platform == "darwin" else "fork")
    if start_method not in ("fork", "spawn"):
        raise ValueError(f"start_method={start_method!r} (or ${START_METHOD_VARIABLE}): choose "
                         f"'fork' (Linux default) or 'spawn' (macOS default)")
    return start_method


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


def check_torchrun_world_size(tp: int, pp: int, dp: int, cp: int = 1) -> None:
    """Under torchrun, its process count must be the mesh's; nothing to check otherwise."""
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size != tp * pp * dp * cp:
        names, sizes = ("tp*pp*dp*cp", f"{tp}*{pp}*{dp}*{cp}") if cp > 1 else ("tp*pp*dp",
                                                                                 f"{tp}*{pp}*{dp}")
        raise ValueError(f"torchrun started WORLD_SIZE={world_size} processes but "
                         f"{names} = {sizes} = {tp * pp * dp * cp}; make them equal "
                         f"(e.g. --nproc-per-node {tp * pp * dp * cp})")


def _run_under_torchrun(fn, args, tp, pp, dp, backend, timeout_s, seed, cp=1):
    """torchrun already started one process per rank: join its group and run fn here only."""
    world_size = int(os.environ["WORLD_SIZE"])
    check_torchrun_world_size(tp, pp, dp, cp)
    owner = not dist.is_initialized()  # we create the process group, so we also destroy it
    if owner:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        backend = _choose_backend(backend, local_world_size, fork=False)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    seed_everything(seed)
    result = fn(ParallelContext.from_distributed(tp, pp, dp, cp=cp), *args)
    if owner:  # wait for every rank, then tear down (exiting with live gloo threads aborts)
        dist.barrier()
        dist.destroy_process_group()
    return result
