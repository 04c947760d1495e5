"""The optimizer of ZeRO-2/3 (`ShardedAdamW`: AdamW on this rank's fp32 pieces of a
FullyShardedDataParallel model) and `training_state_bytes`, the bytes a rank holds for weights,
gradients and optimizer state read from the storages, against Rajbhandari et al.'s formulas
(minimt.scale.zero_state_bytes)."""
from __future__ import annotations

import torch

from .fsdp import FullyShardedDataParallel
from .grads import MeshGradients, counts_in_norm
from .zero import (DistributedOptimizer, adam_moments_and_step, check_adamw_args,
                   check_grad_clip)


class ShardedAdamW(DistributedOptimizer):
    """torch.optim.AdamW's update on this rank's fp32 pieces of a FullyShardedDataParallel model
    (ZeRO-2/3), with ZeRO-1's options: decay_filter, grad_clip (global norm over dp), loss_scaler.
    Its state is fp32 m and v for the pieces (+ the fp32 master itself for 16-bit compute)."""

    def __init__(self, fsdp: FullyShardedDataParallel, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, decay_filter=None, grad_clip: float = 0.0,
                 loss_scaler=None):
        if not isinstance(fsdp, FullyShardedDataParallel):
            raise TypeError(f"ShardedAdamW needs the FullyShardedDataParallel wrapper, got "
                            f"{type(fsdp).__name__}: ShardedAdamW(FullyShardedDataParallel(model, "
                            f"ctx, stage=3))")
        check_grad_clip(grad_clip)
        check_adamw_args(lr, betas, eps, weight_decay)
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
        self.fsdp.check_in_place(self.params)
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
