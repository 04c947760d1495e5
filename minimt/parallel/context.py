"""ParallelContext: where this process sits in the (dp, pp, tp) mesh, and its process groups.

Tensor-parallel ranks are adjacent (they talk most, so on a real cluster they share a node's
fast links), then pipeline stages, then data-parallel replicas:

    rank = dp_rank * (pp * tp) + pp_rank * tp + tp_rank

This is Megatron-LM's optional `--use-tp-pp-dp-mapping` order. Megatron-LM's default,
"tp-cp-ep-dp-pp" (`initialize_model_parallel` in megatron/core/parallel_state.py), puts data
parallelism second and the pipeline outermost: rank = pp_rank * (dp * tp) + dp_rank * tp + tp_rank.

A context-parallel dimension cp (each rank of a cp group holds 1/cp of every sequence; see
context_parallel.py) sits next to tp, as in both of Megatron-LM's orders:

    rank = dp_rank * (pp * cp * tp) + pp_rank * (cp * tp) + cp_rank * tp + tp_rank

With cp = 1 (the default) nothing changes and there is no "cp" group in the layout.
The layout is a pure function (`mesh_ranks`), so it can be tested and drawn without processes.
The context is an object passed to the code that needs it; there are no module-level groups.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

AXES = ("tp", "pp", "dp")
AXIS_NAMES = {"tp": "tensor", "pp": "pipeline", "dp": "data", "cp": "context"}


def _check_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer "
                         f"(1 means no {AXIS_NAMES[name]} parallelism)")


def ensure_divisibility(numerator: int, denominator: int, what: str = "value",
                        by: str = "") -> None:
    """Raise a ValueError that says what to change unless `denominator` divides `numerator`.

    ensure_divisibility(6, 4, "n_head", "tensor-parallel size") ->
    "n_head=6 is not divisible by tensor-parallel size 4; sizes that divide 6: [1, 2, 3, 6]"
    """
    if denominator < 1:
        raise ValueError(f"{by or 'divisor'}={denominator} must be a positive integer")
    if numerator % denominator != 0:
        divisors = [d for d in range(1, numerator + 1) if numerator % d == 0][:12]
        raise ValueError(f"{what}={numerator} is not divisible by {by + ' ' if by else ''}"
                         f"{denominator}; sizes that divide {numerator}: {divisors}")


def divide(numerator: int, denominator: int, what: str = "value", by: str = "") -> int:
    """numerator // denominator, after `ensure_divisibility` (same arguments, same message)."""
    ensure_divisibility(numerator, denominator, what, by)
    return numerator // denominator


def rank_coords(rank: int, tp: int, pp: int, dp: int) -> tuple[int, int, int]:
    """(dp_rank, pp_rank, tp_rank) of a global rank; inverse of dp_rank*pp*tp + pp_rank*tp + tp_rank."""
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp)):
        _check_size(name, value)
    if not 0 <= rank < tp * pp * dp:
        raise ValueError(f"rank={rank} is outside the mesh of tp*pp*dp = {tp * pp * dp} ranks")
    return rank // (pp * tp), rank // tp % pp, rank % tp


def mesh_ranks(tp: int = 1, pp: int = 1, dp: int = 1, cp: int = 1) -> dict[str, list[list[int]]]:
    """Every group of the mesh as lists of global ranks, keyed "tp", "pp", "dp".

    mesh_ranks(tp=2, pp=2, dp=1) ->
    {"tp": [[0, 1], [2, 3]], "pp": [[0, 2], [1, 3]], "dp": [[0], [1], [2], [3]]}
    Groups are listed in a fixed order: every rank must create them in that same order.
    With cp > 1 a "cp" key is added (cp ranks sit between tp and pp: see the module doc).
    """
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp), ("cp", cp)):
        _check_size(name, value)
    if cp > 1:
        return _mesh_ranks_with_cp(tp, pp, dp, cp)

    def rank(d: int, p: int, t: int) -> int:
        return d * pp * tp + p * tp + t

    return {
        "tp": [[rank(d, p, t) for t in range(tp)] for d in range(dp) for p in range(pp)],
        "pp": [[rank(d, p, t) for p in range(pp)] for d in range(dp) for t in range(tp)],
        "dp": [[rank(d, p, t) for d in range(dp)] for p in range(pp) for t in range(tp)],
    }


def _mesh_ranks_with_cp(tp: int, pp: int, dp: int, cp: int) -> dict[str, list[list[int]]]:
    """mesh_ranks with a "cp" axis: rank = d*pp*cp*tp + p*cp*tp + c*tp + t."""
    def rank(d: int, p: int, c: int, t: int) -> int:
        return ((d * pp + p) * cp + c) * tp + t

    cells = [(d, p, c, t) for d in range(dp) for p in range(pp) for c in range(cp) for t in range(tp)]
    def groups(vary: int, size: int) -> list[list[int]]:
        starts = [cell for cell in cells if cell[vary] == 0]
        return [[rank(*cell[:vary], i, *cell[vary + 1:]) for i in range(size)] for cell in starts]

    return {"tp": groups(3, tp), "cp": groups(2, cp), "pp": groups(1, pp), "dp": groups(0, dp)}


def cp_coords(rank: int, tp: int, pp: int, dp: int, cp: int) -> tuple[int, int, int, int]:
    """(dp_rank, pp_rank, cp_rank, tp_rank) of a global rank in a mesh with a cp axis."""
    d, p, inner = rank_coords(rank, tp * cp, pp, dp)  # cp and tp together are the fastest axis
    _check_size("cp", cp)
    return d, p, inner // tp, inner % tp


class ParallelContext:
    """This rank's coordinates and process groups in a (dp, pp, tp) mesh.

    Built by `launch` inside each rank with `ParallelContext.from_distributed(tp, pp, dp)`.
    For serial code paths, `ParallelContext()` is a one-process context: all sizes 1, all groups
    None, no torch.distributed needed; the comm primitives are then the identity.

    Attributes: rank, world_size, device, backend; for each axis a in (tp, pp, dp): `a_rank`,
    `a_size`, `a_group` (a torch ProcessGroup, or None when serial) and `a_ranks` (the global
    ranks of this rank's group, in group-rank order).
    """

    def __init__(self, tp: int = 1, pp: int = 1, dp: int = 1, rank: int = 0,
                 device: torch.device | str = "cpu", backend: str | None = None,
                 groups: dict[str, object] | None = None, cp: int = 1):
        self.dp_rank, self.pp_rank, self.cp_rank, self.tp_rank = cp_coords(rank, tp, pp, dp, cp)
        self.tp_size, self.pp_size, self.dp_size, self.cp_size = tp, pp, dp, cp
        self.world_size = tp * pp * dp * cp
        self.rank = rank
        self.device = torch.device(device)
        self.backend = backend
        layout = mesh_ranks(tp, pp, dp, cp)
        mine = {axis: next(g for g in layout[axis] if rank in g) for axis in layout}
        self.tp_ranks, self.pp_ranks, self.dp_ranks = mine["tp"], mine["pp"], mine["dp"]
        self.cp_ranks = mine.get("cp", [rank])
        groups = groups or {}
        if self.world_size > 1 and set(groups) != set(layout):
            raise ValueError(f"a context of {self.world_size} ranks needs process groups for "
                             f"{tuple(layout)}; use ParallelContext.from_distributed(tp, pp, dp)")
        self.tp_group, self.pp_group, self.dp_group = (groups.get(a) for a in AXES)
        self.cp_group = groups.get("cp")

    @classmethod
    def from_distributed(cls, tp: int = 1, pp: int = 1, dp: int = 1,
                         device: torch.device | str | None = None,
                         cp: int = 1) -> "ParallelContext":
        """Build every group of the mesh over an initialised default process group.

        Collective: every rank must call it with the same sizes (torch's new_group is a
        collective over the whole world, so all groups are created on all ranks, in one order).
        """
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call "
                               "minimt.parallel.launch(fn, ...) or dist.init_process_group first")
        world_size, rank = dist.get_world_size(), dist.get_rank()
        for name, value in (("tp", tp), ("pp", pp), ("dp", dp), ("cp", cp)):
            _check_size(name, value)
        if tp * pp * dp * cp != world_size:
            names, sizes = ("tp*pp*dp*cp", f"{tp}*{pp}*{dp}*{cp}") if cp > 1 else (
                "tp*pp*dp", f"{tp}*{pp}*{dp}")
            raise ValueError(f"{names} = {sizes} = {tp * pp * dp * cp} does not match the world "
                             f"size {world_size}; choose sizes whose product is {world_size}")
        backend = dist.get_backend()
        if device is None:
            device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
                      else torch.device("cpu"))
        groups = {}
        for axis, lists in mesh_ranks(tp, pp, dp, cp).items():
            for ranks in lists:
                group = dist.new_group(ranks)  # every rank calls this for every group
                if rank in ranks:
                    groups[axis] = group
        return cls(tp, pp, dp, rank=rank, device=device, backend=backend, groups=groups, cp=cp)

    def group(self, name: str):
        """The process group called "tp", "pp", "dp" or "world" (None means the default group)."""
        if name == "world":
            return None
        if name not in AXES + ("cp",):
            raise ValueError(f"unknown group {name!r}; choose one of {AXES + ('cp', 'world')}")
        return getattr(self, f"{name}_group")

    def size(self, name: str) -> int:
        """Number of ranks in the group called "tp", "pp", "dp", "cp" or "world"."""
        if name == "world":
            return self.world_size
        self.group(name)  # validates the name
        return getattr(self, f"{name}_size")

    @property
    def is_first_stage(self) -> bool:
        """True on the first pipeline stage (it reads the input batch)."""
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        """True on the last pipeline stage (it computes the loss)."""
        return self.pp_rank == self.pp_size - 1

    @property
    def next_rank(self) -> int | None:
        """Global rank of the next pipeline stage, None on the last stage."""
        return None if self.is_last_stage else self.pp_ranks[self.pp_rank + 1]

    @property
    def prev_rank(self) -> int | None:
        """Global rank of the previous pipeline stage, None on the first stage."""
        return None if self.is_first_stage else self.pp_ranks[self.pp_rank - 1]

    def __repr__(self) -> str:
        return (f"ParallelContext(rank={self.rank}/{self.world_size}, tp={self.tp_rank}/"
                f"{self.tp_size}, pp={self.pp_rank}/{self.pp_size}, dp={self.dp_rank}/"
                f"{self.dp_size}, cp={self.cp_rank}/{self.cp_size}, device={self.device}, backend={self.backend})")


def check_ctx(ctx, what: str) -> None:
    """Refuse anything but a ParallelContext where `what` needs this rank's place in the mesh."""
    if not isinstance(ctx, ParallelContext):
        raise TypeError(f"{what}: ctx must be the ParallelContext that launch passes to "
                        f"fn(ctx, ...), got {type(ctx).__name__}; ParallelContext() is the "
                        f"one-process context")
