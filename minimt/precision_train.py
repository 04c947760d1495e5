"""Train the same GPT on the same batches in several precisions and compare the loss curves.

Modes:
  "fp32"           fp32 weights and compute.
  "bf16-autocast"  fp32 weights, matmuls in bf16 under torch.autocast; no loss scaling needed.
  "fp16-autocast"  fp32 weights, matmuls in fp16 under torch.autocast, dynamic loss scaling.
  "fp16"           a true fp16 model (weights, activations and gradients in fp16) with fp32
                   master weights and dynamic loss scaling (Micikevicius et al. 2018).
  "fp16-noscale"   the same fp16 model without loss scaling: small gradients flush to zero.
The loss is computed in fp32 from the logits in every mode (as Megatron-LM does).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from .model import GPT, cross_entropy_loss
from .precision import DynamicLossScaler, MixedPrecisionOptimizer
from .train import TrainConfig, Trainer, autocast_context, batch_losses, configure_adamw

MODES = {  # mode -> (model dtype, autocast dtype name, dynamic loss scaling)
    "fp32": (torch.float32, None, False),
    "bf16-autocast": (torch.float32, "bfloat16", False),
    "fp16-autocast": (torch.float32, "float16", True),
    "fp16": (torch.float16, None, True),
    "fp16-noscale": (torch.float16, None, False),
}


@dataclass
class PrecisionRun:
    """What one run produced: per-step losses and loss scales, skipped steps, final val loss."""

    mode: str
    losses: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    val_loss: float = float("nan")
    model: torch.nn.Module | None = None


def loss_fp32(model, x, y, autocast_dtype=None, device="cpu"):
    """Forward (under autocast if asked) and the cross entropy in fp32 from the logits."""
    with autocast_context(device, autocast_dtype):
        logits, _ = model(x)                                  # (B, T, V)
    return cross_entropy_loss(logits.float(), y)


def gradient_underflow(model: GPT, x, y, scale: float = 1.0) -> float:
    """Fraction of gradient values that are nonzero when the model runs in fp32 but exactly zero
    when the same weights run in fp16 with the loss multiplied by `scale`: real underflow in the
    fp16 backward pass (activation gradients included), not just in the final cast."""
    grads = {}
    for dtype in (torch.float32, torch.float16):
        m = copy.deepcopy(model).to(dtype)
        (loss_fp32(m, x, y) * scale).backward()
        grads[dtype] = torch.cat([p.grad.float().flatten() for p in m.parameters()])
    nonzero = grads[torch.float32] != 0
    lost = nonzero & (grads[torch.float16] == 0)
    return lost.sum().item() / nonzero.sum().item()


def build(mode: str, model_config, config: TrainConfig, model_seed: int = 0,
          init_scale: float = 2.0 ** 16, growth_interval: int = 2000):
    """GPT(model_config) from `model_seed` in the dtype of `mode`, wrapped in a
    MixedPrecisionOptimizer (fp32 masters for 16-bit weights, a DynamicLossScaler when the mode
    scales); returns (model, optimizer, autocast dtype name or None)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
    dtype, autocast_dtype, scaled = MODES[mode]
    torch.manual_seed(model_seed)
    model = GPT(model_config).to(device=config.device, dtype=dtype)
    scaler = DynamicLossScaler(init_scale, growth_interval=growth_interval) if scaled else None
    optimizer = MixedPrecisionOptimizer(configure_adamw(model, config), scaler,
                                        clip_grad=config.grad_clip or None)
    return model, optimizer, autocast_dtype


def train_step(model, optimizer, x, y, autocast_dtype=None, fault_value=None, device="cpu"):
    """Forward, scaled backward, (optionally) poison the gradients, step; returns (loss, stepped)."""
    optimizer.zero_grad()
    loss = loss_fp32(model, x, y, autocast_dtype, device)
    optimizer.scale_loss(loss).backward()
    if fault_value is not None:
        for p in model.parameters():
            p.grad.fill_(fault_value)
    return loss.detach(), optimizer.step()


def train_precision(mode: str, model_config, data, config: TrainConfig, model_seed: int = 0,
                    init_scale: float = 2.0 ** 16, growth_interval: int = 2000,
                    fault_steps=(), fault_value: float = float("inf"), keep_model: bool = False
                    ) -> PrecisionRun:
    """Train GPT(model_config) from seed `model_seed` for config.max_iters steps in `mode` with the
    Trainer, on config.device (autocast follows the device: CPU here, CUDA where present).

    Batches come from a generator seeded with config.seed, so every mode sees the same data.
    fault_steps: steps whose gradients are overwritten with `fault_value` (inf or NaN) before the
    optimizer step, to show that the step is skipped and the scale backs off.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
    dtype, autocast_dtype, scaled = MODES[mode]
    torch.manual_seed(model_seed)
    model = GPT(model_config)
    settings = dataclasses.replace(config, autocast_dtype=autocast_dtype, progress=False,
                                   dtype=None if dtype == torch.float32 else "float16")
    scaler = DynamicLossScaler(init_scale, growth_interval=growth_interval) if scaled else None
    trainer = Trainer(model, data, settings, loss_scaler=scaler)
    run = PrecisionRun(mode)
    for it in range(config.max_iters):
        run.scales.append(trainer.loss_scale)
        trainer.zero_grad()
        loss = trainer.forward_backward()
        if it in fault_steps:  # an overflow the loss scaler must catch
            for p in model.parameters():
                p.grad.fill_(fault_value)
        trainer.optimizer_step()
        if trainer.last_step_skipped:
            run.skipped.append(it)
        run.losses.append(loss.item())
    gen = torch.Generator().manual_seed(config.seed + 1)  # validation in fp32, same batches for all
    run.val_loss = batch_losses(model.float(), data.get_batch, "val", config.eval_iters,
                                config.batch_size, model_config.block_size, gen,
                                device=config.device).mean().item()
    run.model = model if keep_model else None
    return run
