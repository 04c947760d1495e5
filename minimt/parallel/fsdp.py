"""ZeRO stages 2 and 3 (Rajbhandari et al. 2019, arXiv 1910.02054), run the way PyTorch's FSDP
runs ZeRO-3 (Zhao et al. 2023, arXiv 2304.11277): the model is cut into units (each transformer
block, and the root: embeddings, final LayerNorm, tied output layer), each unit's parameters laid
end to end in one flat buffer padded to a multiple of dp; data-parallel rank r owns the piece
[r*piece, (r+1)*piece) of every unit.

- ZeRO-2 (stage=2): every rank keeps the full 16-bit weights; as soon as a unit's gradients are
  complete in backward (a post-accumulate-grad hook), they are reduce-scattered (divided by dp)
  into this rank's gradient shard and the full gradients are dropped. After AdamW on the shard,
  each unit's updated piece is all-gathered back. On the wire: Psi (reduce-scatter) + Psi
  (all-gather) = 2 Psi per step, Psi = parameters x bytes.
- ZeRO-3 / FSDP (stage=3): only the pieces stay. A unit's full weights are all-gathered just before
  its forward and freed after it, all-gathered again just before its backward and freed once its
  gradients are reduce-scattered: Psi + Psi + Psi = 3 Psi. `prefetch` units ahead are gathered
  asynchronously, overlapping the current unit's compute.
Mixed precision: the pieces are fp32 master weights; the gathered compute copies, the gradients
and the gradient shard are in `param_dtype` (16-bit for bf16 training). Use `ShardedAdamW`.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from ..model import GPT
from .comm import all_gather, all_gather_start, reduce_scatter
from .context import ParallelContext
from .data_parallel import unique_parameters
from .grads import MeshGradients, counts_in_norm
from .zero import SIXTEEN_BIT, DistributedOptimizer, adam_moments_and_step


class ShardedUnit:
    """The parameters of one module as one flat buffer: (padded,) = dp pieces of (piece,)."""

    def __init__(self, params: list[nn.Parameter], dp: int, shard_offset: int):
        self.params = params
        self.bounds, start = [], 0                                     # [start, end) per param
        for p in params:
            self.bounds.append((start, start + p.numel()))
            start += p.numel()
        self.piece = -(-start // dp)                                   # ceil(numel / dp)
        self.padded = self.piece * dp
        self.shard = slice(shard_offset, shard_offset + self.piece)   # in the rank's shards
        self.shapes = [p.shape for p in params]
        self.full: torch.Tensor | None = None                          # (padded,) when gathered
        self.pending = None                                            # a gather in flight
        self.grads_ready = 0


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
    """Shards a GPT's parameters over the "dp" group as ZeRO stage 2 or 3 (see the module doc),
    in place: call the model as before, `loss.backward()`, then `ShardedAdamW.step()`."""

    def __init__(self, model: GPT, ctx: ParallelContext, stage: int = 3, prefetch: int = 1,
                 param_dtype: torch.dtype | None = None):
        if not isinstance(model, GPT):
            raise TypeError(f"FullyShardedDataParallel needs a minimt GPT, got "
                            f"{type(model).__name__}")
        if stage not in (2, 3):
            raise ValueError(f"stage={stage!r}: FullyShardedDataParallel runs ZeRO stage 2 or 3 "
                             f"(stage 1 is DistributedOptimizer)")
        if ctx.tp_size > 1 or ctx.pp_size > 1:
            raise ValueError(f"ZeRO-{stage} here shards over data parallelism only: use tp=1 and "
                             f"pp=1 (got tp={ctx.tp_size}, pp={ctx.pp_size}), or ZeRO-1 (zero=1)")
        if stage == 3 and model.recompute != "none":
            raise ValueError(f"recompute={model.recompute!r} reruns blocks whose weights ZeRO-3 "
                             f"has freed: use recompute='none' with zero=3")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch={prefetch!r} must be an integer >= 0 (units gathered "
                             f"ahead)")
        self.model, self.ctx, self.stage, self.prefetch = model, ctx, stage, prefetch
        model.zero_sharded = self  # save_checkpoint / load_checkpoint find the pieces here
        self.params = unique_parameters(model)
        self.param_dtype = param_dtype or self.params[0].dtype
        blocks = list(model.transformer.h)
        in_blocks = {id(p) for block in blocks for p in block.parameters()}
        groups = [[p for p in self.params if id(p) not in in_blocks]]  # the root: unit 0
        groups += [list(block.parameters()) for block in blocks]        # block i: unit i + 1
        self.units, offset = [], 0
        for group in groups:
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
        for i, unit in enumerate(self.units):
            self._free(unit)
            for p in unit.params:
                p.register_post_accumulate_grad_hook(functools.partial(self._grad_ready, unit))
            if stage == 2:
                self.gather(i, None)
        model.register_forward_pre_hook(lambda module, args: self.gather(0, "forward"))
        model.register_forward_hook(lambda module, args, out: self._after_forward(0, out))
        for i, block in enumerate(blocks, start=1):
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
            unit.full, unit.pending = unit.pending.wait(), None        # (padded,)
            for p, (start, end), shape in zip(unit.params, unit.bounds, unit.shapes):
                p.data = unit.full[start:end].view(shape)
        if phase is not None and self.stage == 3:
            order = range(index + 1, len(self.units)) if phase == "forward" else (
                [i for i in range(len(self.units) - 1, 0, -1) if i < index] if index else
                range(len(self.units) - 1, 0, -1))
            for later in list(order)[:self.prefetch]:
                self._start_gather(later, phase)

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
        them (averaged over dp) into this rank's gradient shard and drop the full gradients."""
        unit.grads_ready += 1
        if unit.grads_ready < len(unit.params):
            return
        unit.grads_ready = 0
        flat = torch.zeros(unit.padded, dtype=self.param_dtype, device=self.ctx.device)
        for p, (start, end) in zip(unit.params, unit.bounds):
            flat[start:end] = p.grad.flatten()
            p.grad = None
        mine = reduce_scatter(flat.div_(self.ctx.dp_size), self.ctx, "dp", phase="backward")
        self.grad_shard[unit.shard] += mine                            # (piece,)
        if self.stage == 3:
            self._free(unit)

    def shard_ranges(self, keep) -> list[tuple[int, int]]:
        """[lo, hi) in this rank's shards of the parameters for which keep(param) is true."""
        ranges = []
        for unit in self.units:
            mine = self.ctx.dp_rank * unit.piece
            for p, (start, end) in zip(unit.params, unit.bounds):
                lo, hi = max(start, mine), min(end, mine + unit.piece)
                if keep(p) and lo < hi:
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

    def full_state_dict(self, pieces: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{serial name: full tensor} of per-rank pieces laid out like the master (default: the
        fp32 master weights; or Adam's moments), assembled on every rank (an all-gather)."""
        pieces = self.master if pieces is None else pieces
        by_rank = all_gather(pieces, self.ctx, "dp", dim=0).view(self.ctx.dp_size, -1)
        state = {}
        for unit in self.units:
            whole = by_rank[:, unit.shard].reshape(-1)                 # (padded,)
            for name, (start, end), shape in zip(self._names(unit), unit.bounds, unit.shapes):
                state[name] = whole[start:end].view(shape).clone()
        return state

    @torch.no_grad()
    def load_full_state_dict(self, full: dict[str, torch.Tensor],
                             pieces: torch.Tensor | None = None) -> None:
        """The inverse: this rank's pieces of serial tensors `full` into `pieces` (default: the
        master weights; then the compute copies follow, ZeRO-2 all-gathering them: every rank
        calls it)."""
        target = self.master if pieces is None else pieces
        for unit in self.units:
            flat = torch.zeros(unit.padded, device=self.ctx.device)
            for name, (start, end) in zip(self._names(unit), unit.bounds):
                flat[start:end] = full[name].flatten()
            target[unit.shard] = flat.view(self.ctx.dp_size, unit.piece)[self.ctx.dp_rank]
        if pieces is None:
            self.after_step()
            if self.stage == 3:
                for unit in self.units:
                    self._free(unit)

    def _names(self, unit: ShardedUnit) -> list[str]:
        """The serial model's names of a unit's parameters (a tied weight under its first)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names[id(p)] for p in unit.params]


class ShardedAdamW(DistributedOptimizer):
    """torch.optim.AdamW's update on this rank's fp32 pieces of a FullyShardedDataParallel model
    (ZeRO-2/3), with ZeRO-1's options: decay_filter, grad_clip (global norm over dp), loss_scaler.
    Its state is fp32 m and v for the pieces (+ the fp32 master itself for 16-bit compute)."""

    def __init__(self, fsdp: FullyShardedDataParallel, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, decay_filter=None, grad_clip: float = 0.0,
                 loss_scaler=None):
        if not lr > 0 or not eps > 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"lr={lr} and eps={eps} must be positive, weight_decay={weight_decay} "
                             f">= 0 and betas={betas} in [0, 1)")
        self.fsdp, self.ctx, self.params, self.dtype = fsdp, fsdp.ctx, fsdp.params, fsdp.param_dtype
        self.param_groups = [dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)]
        self.num_steps, self.grad_clip, self.loss_scaler = 0, grad_clip, loss_scaler
        self.last_grad_norm, self.skipped_steps = None, 0
        self.grads = MeshGradients(fsdp.ctx)
        # fp32 compute: the master is the weights' own shard (state_bytes counts it as 0)
        self.flat_params = fsdp.master if fsdp.param_dtype == torch.float32 else torch.empty(0)
        self.master = fsdp.master
        self.exp_avg = torch.zeros_like(fsdp.master)                   # Adam's m, fp32
        self.exp_avg_sq = torch.zeros_like(fsdp.master)                # Adam's v, fp32
        self.decay_ranges = fsdp.shard_ranges(decay_filter or (lambda p: True))
        self.norm_ranges = fsdp.shard_ranges(lambda p: counts_in_norm(p, fsdp.ctx))

    @torch.no_grad()
    def step(self) -> bool:
        """AdamW on the pieces with the reduce-scattered gradients, then the compute copies."""
        grad = self.fsdp.grad_shard.float()                            # (sum of pieces,)
        if not self.unscale_and_clip(grad):
            return False
        self.adamw_update(grad)
        self.fsdp.after_step()
        return True

    @torch.no_grad()
    def adamw_update(self, grad: torch.Tensor) -> None:
        """AdamW on the whole shard at once: every piece has a gradient (the reduce-scattered
        grad_shard), so all pieces share the model's step count."""
        group = self.param_groups[0]
        self.num_steps += 1
        for lo, hi in self.decay_ranges:                                # decoupled weight decay
            self.master[lo:hi].mul_(1 - group["lr"] * group["weight_decay"])
        adam_moments_and_step(self.master, self.exp_avg, self.exp_avg_sq, grad, group["lr"],
                              group["betas"], group["eps"], self.num_steps)

    def load_steps(self, num_steps: int) -> None:
        self.num_steps = num_steps

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self.fsdp.grad_shard.zero_()


def training_state_bytes(params, optimizer, fsdp: FullyShardedDataParallel | None = None) -> dict:
    """Bytes this rank holds for the weights, gradients and optimizer state, read from the
    storages (each once, in that order: an fp32 master that is the weights' own shard counts as
    weights). Works for torch optimizers, MixedPrecisionOptimizer, DistributedOptimizer (ZeRO-1)
    and ShardedAdamW (ZeRO-2/3)."""
    seen = set()

    def total(tensors) -> int:
        nbytes = 0
        for t in tensors:
            if t is None or t.numel() == 0 or t.untyped_storage().data_ptr() in seen:
                continue
            seen.add(t.untyped_storage().data_ptr())
            nbytes += t.untyped_storage().nbytes()
        return nbytes

    sharded = [] if fsdp is None else [fsdp]
    weights = total([p.data for p in params] + [f.param_shard for f in sharded])
    gradients = total([p.grad for p in params] + [f.grad_shard for f in sharded])
    if isinstance(optimizer, DistributedOptimizer):
        state = [optimizer.master, optimizer.exp_avg, optimizer.exp_avg_sq]
    else:  # torch's: its per-parameter state (not the 0-d step counts), plus any fp32 masters
        inner = getattr(optimizer, "optimizer", optimizer)
        state = list(getattr(optimizer, "master_params", []))
        state += [v for s in inner.state.values() for v in s.values()
                  if isinstance(v, torch.Tensor) and v.dim() > 0]
    return {"weights": weights, "gradients": gradients, "optimizer": total(state)}
