"""Mixed-precision training by hand: loss scalers and an optimizer wrapper with fp32 master weights.

Micikevicius et al. 2018 (arXiv 1710.03740): compute in 16 bits, keep an fp32 master copy of the
weights (small updates would round away in fp16), and multiply the loss by a scale S so that small
gradients stay above fp16's smallest subnormal 2^-24; divide the gradients by S before the update.
A dynamic scaler halves S and skips the step when a gradient overflows, and doubles S after
`growth_interval` clean steps: the rule of torch.amp.GradScaler and Megatron-LM's DynamicGradScaler.
"""
from __future__ import annotations

import math
import warnings

import torch

from . import clip_grads
from .checks import check_number

FP32_MAX = torch.finfo(torch.float32).max  # the scale is kept in fp32, as GradScaler's
_SCALE_HINT = (": it multiplies the loss in fp32 (0 erases the gradients, inf overflows every "
               "step); start at 2**16, GradScaler's default")


def to_fp32(x: float) -> float:
    """x rounded to the nearest fp32 value (inf beyond fp32's max, 0 below its smallest
    subnormal 2^-149): torch.amp.GradScaler keeps its scale as an fp32 tensor."""
    return torch.tensor(x, dtype=torch.float64).float().item()


class StaticLossScaler:
    """A constant loss scale; a step with inf/NaN gradients is still skipped, the scale stays."""

    def __init__(self, scale: float = 2.0 ** 16):
        check_number("scale", scale, 0, FP32_MAX, low_open=True, hint=_SCALE_HINT)
        self.scale = float(scale)

    def update(self, found_inf: bool) -> None:
        """Nothing to adapt: the scale is fixed."""


class DynamicLossScaler:
    """S <- S * backoff_factor on overflow (and the step is skipped); S <- S * growth_factor after
    growth_interval consecutive finite steps. Same decisions as torch.amp.GradScaler."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        check_number("init_scale", init_scale, 0, FP32_MAX, low_open=True, hint=_SCALE_HINT)
        check_number("growth_factor", growth_factor, 1.0, low_open=True)
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor={backoff_factor} must be in (0, 1)")
        if not (isinstance(growth_interval, int) and growth_interval >= 1):
            raise ValueError(f"growth_interval={growth_interval!r} must be a positive integer")
        self.scale = to_fp32(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self.growth_tracker = 0  # consecutive finite steps since the last change

    def update(self, found_inf: bool) -> None:
        """Adapt the scale after a step; found_inf says whether the gradients overflowed.

        The scale is rounded to fp32 after every change, as in GradScaler: enough back-offs take it
        to exactly 0, after which every step overflows (0 * inf) and is skipped."""
        ### BEGIN SOLUTION
        if found_inf:
            before, self.scale = self.scale, to_fp32(self.scale * self.backoff_factor)
            self.growth_tracker = 0
            if self.scale == 0.0 < before:
                warnings.warn("the loss scale underflowed to 0 (fp32) after repeated overflows: "
                              "every later step will be skipped, as with torch.amp.GradScaler. "
                              "Find what makes the gradients inf/NaN (learning rate, data, fp16 "
                              "range) or use bf16", RuntimeWarning, stacklevel=2)
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            grown = to_fp32(self.scale * self.growth_factor)
            if math.isfinite(grown):  # as GradScaler: a scale that would overflow fp32 is not taken
                self.scale = grown
            self.growth_tracker = 0
        ### END SOLUTION


class MixedPrecisionOptimizer:
    """Wraps an optimizer built over a 16-bit model's parameters so that it updates fp32 master
    copies instead (Megatron-LM's Float16OptimizerWithFloat16Params, simplified).

    step(): copy the 16-bit grads to fp32 master grads (and free the 16-bit ones), unscale by 1/S,
    check for inf/NaN, update the scaler, skip or clip + step, then copy the master weights back
    into the 16-bit model. The optimizer state (Adam's m, v) is fp32 because it is created for the
    fp32 master parameters. `grads` does the norm and the overflow check: `minimt.clip_grads`
    (this process) by default, `minimt.parallel.grads.MeshGradients(ctx)` over a mesh.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, loss_scaler=None,
                 clip_grad: float | None = None, grads=clip_grads):
        self.optimizer = optimizer
        self.loss_scaler = loss_scaler
        self.clip_grad = clip_grad
        self.grads = grads
        if optimizer.state:
            raise ValueError("wrap the optimizer before its first step: it already has state")
        self.model_params, self.master_params = [], []
        for group in optimizer.param_groups:
            masters = []
            for p in group["params"]:
                if p.dtype == torch.float32:
                    master = p  # already fp32 (e.g. under torch.autocast): its own master
                elif p.dtype in (torch.float16, torch.bfloat16):
                    master = p.detach().clone().float().requires_grad_(True)  # fp32 master weight
                    for mark in ("tensor_model_parallel", "pipeline_duplicate"):
                        if getattr(p, mark, False):
                            setattr(master, mark, True)
                else:
                    raise ValueError(f"parameter of dtype {p.dtype}: MixedPrecisionOptimizer "
                                     "handles float16, bfloat16 and float32 parameters")
                self.model_params.append(p)
                masters.append(master)
            self.master_params.extend(masters)
            group["params"] = masters
        self.skipped_steps = 0

    @property
    def scale(self) -> float:
        """The current loss scale S (1.0 without a scaler)."""
        return self.loss_scaler.scale if self.loss_scaler is not None else 1.0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """loss * S: call backward() on this instead of on the loss."""
        return loss * self.scale

    def zero_grad(self) -> None:
        """Free the 16-bit and the fp32 gradients (set_to_none, as PyTorch's default)."""
        for p in self.model_params + self.master_params:
            p.grad = None

    def step(self) -> bool:
        """One update; returns False (and leaves the weights alone) when the step was skipped."""
        ### BEGIN SOLUTION
        inv_scale = to_fp32(1.0 / self.scale) if self.scale else math.inf  # fp32, as GradScaler
        for p, master in zip(self.model_params, self.master_params):
            if master is p:
                if p.grad is not None:
                    p.grad.mul_(inv_scale)
                continue
            if p.grad is None:
                master.grad = None
                continue
            master.grad = p.grad.float().mul_(inv_scale)  # fp32 copy of the unscaled gradient
            p.grad = None  # the 16-bit gradient is not needed any more
        overflow = self.grads.found_inf(self.master_params)
        if self.loss_scaler is not None:
            self.loss_scaler.update(overflow)
        if overflow:
            self.skipped_steps += 1
            for master in self.master_params:
                master.grad = None
            return False
        if self.clip_grad:
            self.grads.clip_grad_norm(self.master_params, self.clip_grad)
        self.optimizer.step()
        with torch.no_grad():
            for p, master in zip(self.model_params, self.master_params):
                if master is not p:
                    p.copy_(master)  # round the fp32 master back to 16 bits for the next forward
        return True
        ### END SOLUTION


# Training-state bytes per parameter (weights, gradients, optimizer state; activations not counted).
# "fp32" and the two mixed schemes are Megatron Core's table (docs: distrib_optimizer, "float16
# param, float16 grads: 20; float16 param, fp32 grads: 18; fp32 param, fp32 grads: 16"). ZeRO
# (Rajbhandari et al. 2020, arXiv 1910.02054, section 3.1) counts 2 + 2 + 12 = 16 for mixed precision
# Adam because it leaves the fp32 copy of the gradients out (it is transient there).
BYTES_PER_PARAM = {
    "fp32 + Adam": {"fp32 weights": 4, "fp32 grads": 4, "Adam m": 4, "Adam v": 4},
    "mixed, 16-bit grads kept (Megatron)": {"16-bit weights": 2, "16-bit grads": 2,
                                            "fp32 master weights": 4, "fp32 master grads": 4,
                                            "Adam m": 4, "Adam v": 4},
    "mixed, fp32 grads (minimt)": {"16-bit weights": 2, "fp32 master weights": 4,
                                   "fp32 master grads": 4, "Adam m": 4, "Adam v": 4},
    "mixed, ZeRO's count": {"16-bit weights": 2, "16-bit grads": 2, "fp32 master weights": 4,
                            "Adam m": 4, "Adam v": 4},
}


def bytes_per_param(scheme: str) -> int:
    """Total training-state bytes per parameter of a scheme in BYTES_PER_PARAM."""
    if scheme not in BYTES_PER_PARAM:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {list(BYTES_PER_PARAM)}")
    return sum(BYTES_PER_PARAM[scheme].values())


def training_state_bytes(model: torch.nn.Module, optimizer) -> dict[str, int]:
    """Real bytes held now by the model's weights and grads, the fp32 masters and their grads (if
    `optimizer` is a MixedPrecisionOptimizer) and the optimizer state, each tensor counted once."""
    seen: set[int] = set()

    def nbytes(tensors) -> int:
        total = 0
        for t in tensors:
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total

    params = list(model.parameters())
    inner = getattr(optimizer, "optimizer", optimizer)
    masters = getattr(optimizer, "master_params", [])
    state = [t for s in inner.state.values() for t in s.values() if torch.is_tensor(t)]
    return {"weights": nbytes(params), "grads": nbytes(p.grad for p in params),
            "master weights": nbytes(masters), "master grads": nbytes(m.grad for m in masters),
            "optimizer state": nbytes(state)}
