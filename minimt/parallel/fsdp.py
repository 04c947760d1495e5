"""ZeRO stages 2 and 3 (Rajbhandari et al. 2019, arXiv 1910.02054), run the way PyTorch's FSDP
runs ZeRO-3 (Zhao et al. 2023, arXiv 2304.11277): the model is cut into units (the tied
embedding / output weight, the other parameters outside the blocks, each transformer block), each
unit's parameters laid end to end in one flat buffer padded to a multiple of dp; data-parallel
rank r owns the piece [r*piece, (r+1)*piece) of every unit.

- ZeRO-2 (stage=2): every rank keeps the full 16-bit weights; as soon as a unit's gradients are
  complete in backward (a post-accumulate-grad hook), they are reduce-scattered (divided by dp)
  into this rank's gradient shard and the full gradients are dropped; the reduce-scatter runs
  while the next unit's backward computes. After AdamW on the shard,
  each unit's updated piece is all-gathered back. On the wire: Psi (reduce-scatter) + Psi
  (all-gather) = 2 Psi per step, Psi = parameters x bytes (a reduce-scatter per backward: with k
  accumulated micro-batches, or a pipeline's m, k Psi + Psi, as DeepSpeed's ZeRO-2).
- ZeRO-3 / FSDP (stage=3): only the pieces stay. A unit's full weights are all-gathered just before
  its forward and freed after it, all-gathered again just before its backward and freed once its
  gradients are reduce-scattered: Psi + Psi + Psi = 3 Psi. `prefetch` units ahead are gathered
  asynchronously, overlapping the current unit's compute.
Mixed precision: the pieces are fp32 master weights; the gathered compute copies, the gradients
and the gradient shard are in `param_dtype` (16-bit for bf16 training). Use `ShardedAdamW`.

Both compose with tensor parallelism (each tp rank shards its own slices over its dp group, as
PyTorch's 2D FSDP + TP); ZeRO-2 also with pipeline parallelism (pass this rank's chunks; the tied
weight is a unit of its own, so the first and last stage hold the same piece of it and sum its
gradient piece). ZeRO-3 with pp > 1 is refused (minimt.parallel.fsdp_units.check_zero_layout).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from .comm import all_gather, all_gather_start, reduce_scatter_along_start
from .context import ParallelContext, check_ctx
from .data_parallel import unique_parameters
from .fsdp_units import ShardedUnit, blocks, check_fsdp_layout, keeps, unit_groups
from .zero import SIXTEEN_BIT, moved_error


class _GatherBeforeBackward(torch.autograd.Function):
    """Identity forward on a unit's outputs; backward first all-gathers the unit's weights again
    (ZeRO-3 freed them after forward) and prefetches the units the backward reaches next."""

    @staticmethod
    def forward(ctx, fsdp, index, *outputs):
        ctx.fsdp, ctx.index = fsdp, index
        return outputs[0] if len(outputs) == 1 else outputs

    @staticmethod
    def backward(ctx, *grads):
        ctx.fsdp.gather(ctx.index, "backward")
        return (None, None, *grads)


class FullyShardedDataParallel:
    """Shards a GPT's parameters (or, for ZeRO-2 with pp > 1, this rank's pipeline chunks') over
    the "dp" group as ZeRO stage 2 or 3 (see the module doc), in place: call the model as before,
    `loss.backward()`, then `ShardedAdamW.step()`."""

    def __init__(self, model, ctx: ParallelContext, stage: int = 3, prefetch: int = 1,
                 param_dtype: torch.dtype | None = None):
        modules = list(model) if isinstance(model, (list, tuple, nn.ModuleList)) else [model]
        check_ctx(ctx, "FullyShardedDataParallel")
        check_fsdp_layout(modules, ctx, stage)
        if any(getattr(m, "zero_sharded", None) is not None for m in modules):
            raise ValueError("this model is already sharded (FullyShardedDataParallel was called "
                             "on it): wrap a freshly built GPT once")
        if stage == 3 and modules[0].recompute != "none":
            raise ValueError(f"recompute={modules[0].recompute!r} reruns blocks whose weights "
                             f"ZeRO-3 has freed: use recompute='none' with zero=3")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch={prefetch!r} must be an integer >= 0 (units gathered "
                             f"ahead)")
        if param_dtype not in (None, torch.float32, *SIXTEEN_BIT):
            raise ValueError(f"param_dtype={param_dtype!r} must be None (the model's dtype), "
                             f"torch.float32, torch.bfloat16 or torch.float16")
        self.model, self.ctx, self.stage, self.prefetch = model, ctx, stage, prefetch
        self.modules = modules
        for module in modules:  # save_checkpoint / load_checkpoint find the pieces here
            module.zero_sharded = self
        self.params = unique_parameters(modules)
        self.param_dtype = param_dtype or self.params[0].dtype
        self.units, offset = [], 0
        for group in unit_groups(modules):
            self.units.append(ShardedUnit(group, ctx.dp_size, offset))
            offset += self.units[-1].piece
        # this rank's pieces of every unit, end to end: fp32 master, compute copy, gradients
        self.master = torch.zeros(offset, device=ctx.device)           # (sum of pieces,)
        with torch.no_grad():
            for unit in self.units:
                flat = torch.zeros(unit.padded, device=ctx.device)
                for p, (start, end) in zip(unit.params, unit.bounds):
                    flat[start:end] = p.detach().flatten()
                self.master[unit.shard] = flat.view(ctx.dp_size, unit.piece)[ctx.dp_rank]
        # ZeRO-3 keeps a 16-bit copy of its pieces to gather from; ZeRO-2's full weights hold it
        sixteen = self.param_dtype in SIXTEEN_BIT
        self.param_shard = self.master.to(self.param_dtype) if sixteen else self.master
        if stage == 2:
            self.param_shard = None if sixteen else self.master
        self.grad_shard = torch.zeros(offset, dtype=self.param_dtype, device=ctx.device)
        self.in_flight = []  # (unit, reduce-scatter started in this backward)
        for i, unit in enumerate(self.units):
            self._free(unit)
            for p in unit.params:
                p.register_post_accumulate_grad_hook(functools.partial(self._grad_ready, unit))
            if stage == 2:
                self.gather(i, None)
        if stage == 3:
            self._register_gather_hooks()

    def _register_gather_hooks(self) -> None:
        """ZeRO-3 (one GPT): the units outside the blocks are gathered for the whole forward, each
        block's around its own; a pass's next `prefetch` units are gathered ahead."""
        model_blocks = blocks(self.model)
        first_block = len(self.units) - len(model_blocks)
        roots = list(range(first_block))
        self.order = {"forward": roots + list(range(first_block, len(self.units))),
                      "backward": roots + list(range(len(self.units) - 1, first_block - 1, -1))}

        def before_model(module, args):
            for i in roots:
                self.gather(i, "forward")

        def after_model(module, args, output):
            for i in roots:
                output = self._after_forward(i, output)
            return output
        self.model.register_forward_pre_hook(before_model)
        self.model.register_forward_hook(after_model)
        for i, block in enumerate(model_blocks, start=first_block):
            block.register_forward_pre_hook(functools.partial(self._before_block, i))
            block.register_forward_hook(
                lambda module, args, out, i=i: self._after_forward(i, out))

    # ------------------------------------------------------------------------ gather and free
    def _start_gather(self, index: int, phase: str | None) -> None:
        """Launch the all-gather of unit `index`'s pieces, unless it is gathered or in flight."""
        unit = self.units[index]
        if unit.full is None and unit.pending is None:
            unit.pending = all_gather_start(self._compute_piece(unit), self.ctx, "dp", dim=0,
                                            phase=phase)

    def _compute_piece(self, unit: ShardedUnit) -> torch.Tensor:
        """This rank's piece of a unit in the compute dtype (piece,)."""
        if self.param_shard is None:
            return self.master[unit.shard].to(self.param_dtype)
        return self.param_shard[unit.shard]

    def gather(self, index: int, phase: str | None) -> None:
        """Make unit `index`'s full weights the parameters' data (waiting for its all-gather),
        then prefetch the next `prefetch` units in this pass's order."""
        self._start_gather(index, phase)
        unit = self.units[index]
        if unit.pending is not None:
            self.check_in_place(unit.params)
            unit.full, unit.pending = unit.pending.wait(), None        # (padded,)
            for p, (start, end), shape in zip(unit.params, unit.bounds, unit.shapes):
                p.data = unit.full[start:end].view(shape)
        if phase is not None and self.stage == 3:
            order = self.order[phase]
            for later in order[order.index(index) + 1:][:self.prefetch]:
                self._start_gather(later, phase)

    def check_in_place(self, params) -> None:
        """Refuse parameters cast or moved (model.to(...)) after wrapping: the pieces stay."""
        moved = next((p for p in params if p.dtype != self.param_dtype
                      or p.device != self.master.device), None)
        if moved is not None:
            raise moved_error(moved, self.param_dtype, self.master.device,
                              "FullyShardedDataParallel", "wrap the model and build ShardedAdamW")

    def _free(self, unit: ShardedUnit) -> None:
        """Drop the full weights: each parameter keeps an empty tensor until the next gather."""
        empty = torch.empty(0, dtype=self.param_dtype, device=self.ctx.device)
        for p in unit.params:
            p.data = empty
        unit.full = None

    def _before_block(self, index: int, module, args) -> None:
        self.gather(index, "forward")

    def _after_forward(self, index: int, output):
        """ZeRO-3, after unit `index`'s forward: free its full weights (`_free`), and pass the
        outputs that require grad through `_GatherBeforeBackward`, so that the backward gathers
        the weights again before it reaches this unit. Returns the output, same structure."""
        if self.stage == 2:
            return output
        ### BEGIN SOLUTION
        self._free(self.units[index])
        outputs = output if isinstance(output, tuple) else (output,)
        grads = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
        if not grads:
            return output
        wrapped = _GatherBeforeBackward.apply(self, index, *grads)
        wrapped = iter(wrapped if isinstance(wrapped, tuple) else (wrapped,))
        result = tuple(next(wrapped) if isinstance(o, torch.Tensor) and o.requires_grad else o
                       for o in outputs)
        return result if isinstance(output, tuple) else result[0]
        ### END SOLUTION

    # ------------------------------------------------------------------------ gradients
    def _grad_ready(self, unit: ShardedUnit, param: nn.Parameter) -> None:
        """After a parameter's gradient is complete: once the whole unit's are, reduce-scatter
        them (averaged over dp) into this rank's gradient shard and drop the full gradients. A
        parameter whose gradient comes twice first (a schedule's split backward) accumulates."""
        unit.ready.add(id(param))
        if len(unit.ready) == len(unit.params):
            self._reduce_scatter(unit)

    def _reduce_scatter(self, unit: ShardedUnit, in_backward: bool = True) -> None:
        """Start reduce-scattering the unit's gradients (None = 0) / dp and drop them: the backward
        of the next unit runs meanwhile. One unit in flight at a time (the previous one is added
        to grad_shard first), so at most two units' full gradients exist; the backward's end (a
        queued callback) adds the last."""
        unit.ready.clear()
        flat = torch.zeros(unit.padded, dtype=self.param_dtype, device=self.ctx.device)
        for p, (start, end) in zip(unit.params, unit.bounds):
            if p.grad is not None:
                flat[start:end] = p.grad.flatten()
            p.grad = None
        if self.in_flight:
            self._finish_reduce_scatters()
        elif in_backward:  # the first of this backward
            torch.autograd.Variable._execution_engine.queue_callback(self._finish_reduce_scatters)
        self.in_flight.append((unit, reduce_scatter_along_start(
            flat.div_(self.ctx.dp_size), self.ctx, "dp", 0, phase="backward")))
        if self.stage == 3:
            self._free(unit)

    def _finish_reduce_scatters(self) -> None:
        """Wait for the backward's reduce-scatters and add each into this rank's gradient shard."""
        for unit, pending in self.in_flight:
            self.grad_shard[unit.shard] += pending.wait()              # (piece,)
        self.in_flight = []

    def flush_gradients(self) -> None:
        """After the last backward of a step: reduce-scatter any unit whose gradients came in
        part only (every dp rank runs the same schedule, so all flush the same units)."""
        for unit in self.units:
            if unit.ready:
                self._reduce_scatter(unit, in_backward=False)
        self._finish_reduce_scatters()

    def grad_piece(self, param: nn.Parameter) -> torch.Tensor:
        """This rank's gradient piece of the unit that holds `param` alone (the tied weight)."""
        unit = next(u for u in self.units if u.params == [param])
        return self.grad_shard[unit.shard]

    def shard_ranges(self, keep) -> list[tuple[int, int]]:
        """[lo, hi) in this rank's shards of the parameters for which keep(param) is true; keep
        sees each parameter with its full shape (e.g. a weight-decay filter p.dim() >= 2), also
        where ZeRO-3 has freed it (a stand-in view of one element then)."""
        ranges = []
        for unit in self.units:
            mine = self.ctx.dp_rank * unit.piece
            for p, (start, end), shape in zip(unit.params, unit.bounds, unit.shapes):
                lo, hi = max(start, mine), min(end, mine + unit.piece)
                if lo < hi and keeps(keep, p, shape):
                    ranges.append((unit.shard.start + lo - mine, unit.shard.start + hi - mine))
        return ranges

    @torch.no_grad()
    def after_step(self) -> None:
        """The updated fp32 master -> the compute pieces; ZeRO-2 all-gathers every unit back."""
        if self.param_shard is not None and self.param_shard is not self.master:
            self.param_shard.copy_(self.master)
        if self.stage == 2:
            for unit in self.units:
                unit.full.copy_(all_gather(self._compute_piece(unit), self.ctx, "dp", dim=0,
                                           phase="optimizer"))

    def param_tensors(self, pieces: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """{id(param): this rank's whole tensor (its tensor-parallel slice)} of per-rank pieces
        laid out like the master (default: the fp32 master weights; or Adam's moments),
        assembled on every rank (an all-gather over dp)."""
        pieces = self.master if pieces is None else pieces
        by_rank = all_gather(pieces, self.ctx, "dp", dim=0).view(self.ctx.dp_size, -1)
        tensors = {}
        for unit in self.units:
            whole = by_rank[:, unit.shard].reshape(-1)                 # (padded,)
            for p, (start, end), shape in zip(unit.params, unit.bounds, unit.shapes):
                tensors[id(p)] = whole[start:end].view(shape).clone()
        return tensors

    def full_state_dict(self, pieces: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{name: tensor} of `param_tensors` under the modules' parameter names (a tied weight
        under its first): the serial state dict when tp = pp = 1."""
        tensors = self.param_tensors(pieces)
        names = {}
        for module in self.modules:
            for name, p in module.named_parameters():
                names.setdefault(id(p), name)
        return {names[key]: t for key, t in tensors.items()}

    @torch.no_grad()
    def load_param_tensors(self, tensors: dict[int, torch.Tensor],
                           pieces: torch.Tensor | None = None) -> None:
        """The inverse of `param_tensors`: this rank's pieces of {id(param): tensor} into `pieces`
        (default: the master weights; then the compute copies follow, ZeRO-2 all-gathering them:
        every rank calls it)."""
        target = self.master if pieces is None else pieces
        for unit in self.units:
            flat = torch.zeros(unit.padded, device=self.ctx.device)
            for p, (start, end) in zip(unit.params, unit.bounds):
                flat[start:end] = tensors[id(p)].flatten()
            target[unit.shard] = flat.view(self.ctx.dp_size, unit.piece)[self.ctx.dp_rank]
        if pieces is None:
            self.after_step()
            if self.stage == 3:
                for unit in self.units:
                    self._free(unit)
