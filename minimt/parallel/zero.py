"""ZeRO stage 1 (Rajbhandari et al. 2019, arXiv 1910.02054; Megatron-LM's distributed optimizer):
the optimizer state is split over the data-parallel group instead of copied on every replica.

The module's parameters are laid end to end in one flat buffer of N elements (padded to a
multiple of dp); data-parallel rank r owns elements [r*N/dp, (r+1)*N/dp). A step:
1. reduce-scatter the flat gradients (divided by dp): rank r receives the average of its shard;
2. AdamW on the shard: fp32 master weights and the two moments exist for the shard only;
3. all-gather the updated shards into every replica's parameters.
The bytes on the wire equal one all-reduce (reduce-scatter + all-gather), and each rank keeps
1/dp of the optimizer state: 8N/dp bytes (m, v) for fp32 weights, 12N/dp (+ fp32 master) for
16-bit weights (Megatron's docs, distrib_optimizer: "8 + 8/d" and "6 + 12/d" bytes per parameter).
"""
from __future__ import annotations

from typing import Callable

import torch

from .comm import all_gather, reduce_scatter
from .context import ParallelContext, check_ctx
from .data_parallel import unique_parameters
from .grads import MeshGradients, counts_in_norm
from .pipeline_runtime import mark_tied_copy

SIXTEEN_BIT = (torch.float16, torch.bfloat16)


class DistributedOptimizer:
    """AdamW (torch.optim.AdamW's update) with its state sharded over the "dp" group (ZeRO-1).

    Build it on the *unwrapped* module (or a list of pipeline chunks), on every rank, after the
    replicas are equal. A training step is `loss.backward(); opt.step(); opt.zero_grad()`: step()
    averages the gradients over dp itself. decay_filter(param) -> bool picks the parameters that
    get weight decay (None: all, as torch.optim.AdamW(model.parameters())). `param_groups[0]["lr"]`
    may be changed between steps (a learning-rate schedule).
    grad_clip > 0 clips the global gradient norm over the whole mesh (each parameter counted once:
    tp-replicated ones on tp rank 0, the last stage's copy of a tied embedding not at all); the
    norm before clipping is `last_grad_norm`. loss_scaler (minimt.precision's Static/Dynamic
    LossScaler): gradients are divided by its scale, and a step with inf/NaN on any rank is
    skipped everywhere (step() returns False).
    """

    def __init__(self, module, ctx: ParallelContext, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, decay_filter: Callable | None = None,
                 grad_clip: float = 0.0, loss_scaler=None):
        check_adamw_args(lr, betas, eps, weight_decay)
        check_ctx(ctx, "DistributedOptimizer")
        check_grad_clip(grad_clip)
        self.ctx = ctx
        _check_module(module)
        self.params = unique_parameters(module)
        if not self.params:
            raise ValueError(f"DistributedOptimizer was given {type(module).__name__} without "
                             f"parameters: give the model (or its list of pipeline chunks)")
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ValueError(f"parameters of several dtypes {sorted(map(str, dtypes))}: cast the "
                             f"model to one dtype (e.g. model.to(torch.bfloat16)) first")
        self.dtype = dtypes.pop()
        if self.dtype not in SIXTEEN_BIT + (torch.float32,):
            raise ValueError(f"parameters of dtype {self.dtype}: use float32, bfloat16 or float16")
        self.param_groups = [dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)]
        self.num_steps = 0
        self.grad_clip, self.loss_scaler = grad_clip, loss_scaler
        self.last_grad_norm, self.skipped_steps = None, 0
        numel = sum(p.numel() for p in self.params)
        self.shard_size = -(-numel // ctx.dp_size)                      # ceil(N / dp)
        self.shard_start = ctx.dp_rank * self.shard_size
        # the parameters become views of one flat buffer, so the all-gather lands in place
        self.flat_params = torch.zeros(self.shard_size * ctx.dp_size, dtype=self.dtype,
                                       device=ctx.device)               # (N_pad,)
        self.segments, offset = [], 0                                   # (param, start, end)
        with torch.no_grad():
            for p in self.params:
                view = self.flat_params[offset:offset + p.numel()]
                view.copy_(p.flatten())
                p.data = view.view_as(p)
                self.segments.append((p, offset, offset + p.numel()))
                offset += p.numel()
        mine = self.flat_params[self.shard_start:self.shard_start + self.shard_size]
        # fp32 weights are their own master; 16-bit ones get an fp32 copy of this rank's shard
        self.master = mine.float() if self.dtype in SIXTEEN_BIT else mine  # (N_pad/dp,)
        self.exp_avg = torch.zeros(self.shard_size, device=ctx.device)  # Adam's m, fp32
        self.exp_avg_sq = torch.zeros(self.shard_size, device=ctx.device)  # Adam's v, fp32
        decays = decay_filter or (lambda p: True)
        # each parameter counts its own steps, as AdamW: one whose first gradient comes late
        # gets the bias correction of its own first step (param, shard range, decays?, steps)
        self.param_steps = [[p, where, decays(p), 0] for p, start, end in self.segments
                            if (where := self._local_range(start, end)) is not None]
        self.grads = MeshGradients(ctx)  # the mesh's one norm and overflow rule
        if isinstance(module, (list, tuple)):  # pipeline chunks: the first stage counts the tie
            mark_tied_copy(module, ctx)
        self.norm_ranges = self._ranges(lambda p: counts_in_norm(p, ctx))

    def _ranges(self, keep: Callable) -> list[tuple[int, int]]:
        """This rank's shard coordinates of the parameters for which keep(param) is true."""
        ranges = (self._local_range(start, end) for p, start, end in self.segments if keep(p))
        return [r for r in ranges if r is not None]

    def _local_range(self, start: int, end: int) -> tuple[int, int] | None:
        """[start, end) of the flat buffer in this rank's shard coordinates, or None."""
        lo, hi = max(start, self.shard_start), min(end, self.shard_start + self.shard_size)
        return (lo - self.shard_start, hi - self.shard_start) if lo < hi else None

    def flat_grads(self) -> torch.Tensor:
        """Every parameter's gradient end to end in fp32, zeros for none and for the padding."""
        self._check_parameters_in_place()
        flat = torch.zeros(self.flat_params.numel(), device=self.ctx.device)  # (N_pad,)
        for p, start, end in self.segments:
            if p.grad is not None:
                flat[start:end] = p.grad.flatten()
        return flat

    def _check_parameters_in_place(self) -> None:
        """The parameters must still be views of flat_params: model.to(dtype or device) after
        building the optimizer gives them new storage, and step() would update a detached copy."""
        base = self.flat_params.data_ptr()
        for p, start, _ in self.segments:
            if p.dtype != self.dtype or p.device != self.flat_params.device \
                    or p.data_ptr() != base + start * self.flat_params.element_size():
                raise moved_error(p, self.dtype, self.flat_params.device, "DistributedOptimizer")

    @torch.no_grad()
    def adamw_update(self, grad: torch.Tensor) -> None:
        """torch.optim.AdamW's update of this rank's shard: master, exp_avg, exp_avg_sq (fp32),
        each parameter with its own step count; a parameter whose .grad is None stays as it is."""
        if all(p.grad is None for p in self.params):
            return
        group = self.param_groups[0]
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        self.num_steps += 1  # the model's step count: its most trained parameter's, as AdamW
        for entry in self.param_steps:
            p, (lo, hi), decays, steps = entry
            if p.grad is None:
                continue
            entry[3] = steps = steps + 1
            master, m, v, g = (t[lo:hi] for t in (self.master, self.exp_avg, self.exp_avg_sq, grad))
            if decays:                                                  # decoupled weight decay
                master.mul_(1 - lr * wd)
            adam_moments_and_step(master, m, v, g, lr, (beta1, beta2), eps, steps)

    def load_steps(self, num_steps: int) -> None:
        """Set every parameter's step count to a checkpoint's (the format holds one count)."""
        self.num_steps = num_steps
        for entry in self.param_steps:
            entry[3] = num_steps

    def unscale_and_clip(self, grad: torch.Tensor) -> bool:
        """Divide this rank's gradient shard by the loss scale and clip it by the global norm, in
        place; False (and the scaler told) when any rank found inf or NaN: skip the step."""
        if self.loss_scaler is not None:
            grad.mul_(1.0 / self.loss_scaler.scale)
            found = self.grads.any_rank((~torch.isfinite(grad)).any().float().reshape(1))
            self.loss_scaler.update(found)
            if found:
                self.skipped_steps += 1
                return False
        if self.grad_clip > 0:
            self.last_grad_norm = self.grads.clip_shard(
                grad, [grad[lo:hi] for lo, hi in self.norm_ranges], self.grad_clip)
        return True

    @torch.no_grad()
    def step(self) -> bool:
        """Average the gradients over dp: reduce_scatter(flat_grads() / dp, ctx, "dp",
        phase="optimizer") gives this rank's (N_pad/dp,) shard; unscale_and_clip(shard) (False:
        return False, the loss scaler skipped the step); adamw_update(shard) on the fp32 master;
        then all_gather(master in the parameters' dtype, ctx, "dp", dim=0, phase="optimizer")
        into flat_params, every replica's parameters. Returns True when the step was taken."""
        ### BEGIN SOLUTION
        flat = self.flat_grads().div_(self.ctx.dp_size)                 # (N_pad,)
        grad = reduce_scatter(flat, self.ctx, "dp", phase="optimizer")   # (N_pad/dp,) my shard
        if not self.unscale_and_clip(grad):
            return False
        self.adamw_update(grad)
        gathered = all_gather(self.master.to(self.dtype), self.ctx, "dp", dim=0,
                              phase="optimizer")                        # (N_pad,)
        self.flat_params.copy_(gathered)
        return True
        ### END SOLUTION

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (set them to None, PyTorch's default, or to zeros)."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_bytes(self) -> dict[str, int]:
        """Bytes of memory this rank holds for the optimizer, read from the tensors' storages:
        the fp32 master (0 when it is a view of fp32 parameters), exp_avg, exp_avg_sq."""
        def owned(t: torch.Tensor) -> int:
            shared = t.untyped_storage().data_ptr() == self.flat_params.untyped_storage().data_ptr()
            return 0 if shared else t.untyped_storage().nbytes()
        return {"master weights": owned(self.master), "exp_avg": owned(self.exp_avg),
                "exp_avg_sq": owned(self.exp_avg_sq)}


@torch.no_grad()
def adam_moments_and_step(master, m, v, g, lr: float, betas: tuple[float, float], eps: float,
                          steps: int) -> None:
    """Adam's moments and bias-corrected step on fp32 tensors of one shape, in place (weight
    decay is the caller's): m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, master -= lr m^/(sqrt(v^)+eps)."""
    beta1, beta2 = betas
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias1, bias2 = 1 - beta1 ** steps, 1 - beta2 ** steps
    master.addcdiv_(m, (v.sqrt() / bias2 ** 0.5).add_(eps), value=-lr / bias1)


def moved_error(p, dtype: torch.dtype, device, built: str,
                fix: str = "build the optimizer") -> RuntimeError:
    """The error for a parameter cast or moved after the optimizer (`built`) took its storage."""
    return RuntimeError(f"the model's parameters were cast or moved after {built} was built (now "
                        f"{p.dtype} on {p.device}, built for {dtype} on {device}): step() would "
                        f"update a detached buffer; {fix} after model.to(...)")


def check_adamw_args(lr, betas, eps, weight_decay) -> None:
    """torch.optim.AdamW's rules for its numbers, with a sentence naming the one that is wrong."""
    def number(v):
        return not isinstance(v, bool) and isinstance(v, (int, float))
    ok_betas = isinstance(betas, (tuple, list)) and len(betas) == 2 and all(
        number(b) and 0 <= b < 1 for b in betas)
    if not (number(lr) and lr > 0 and number(eps) and eps > 0 and number(weight_decay)
            and weight_decay >= 0 and ok_betas):
        raise ValueError(f"lr={lr!r} and eps={eps!r} must be positive numbers, weight_decay="
                         f"{weight_decay!r} a number >= 0 and betas={betas!r} a pair in [0, 1) "
                         f"(AdamW's defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8)")


def check_grad_clip(grad_clip) -> None:
    if isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)) \
            or not 0 <= grad_clip < float("inf"):
        raise ValueError(f"grad_clip={grad_clip!r} must be a number >= 0: the largest global "
                         f"gradient norm (0 turns clipping off; Megatron-LM's default is 1.0)")


def _check_module(module) -> None:
    """Refuse a DistributedDataParallel wrapper: its gradients would be averaged twice."""
    if any(type(m).__name__ == "DistributedDataParallel"
           for m in (module if isinstance(module, (list, tuple)) else [module])):
        raise ValueError("DistributedOptimizer was given a DistributedDataParallel wrapper: it "
                         "averages the gradients itself (reduce-scatter), so DDP would average "
                         "them twice; build it on the unwrapped model (ddp.module) and drop DDP")
