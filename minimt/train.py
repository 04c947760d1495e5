"""Training loop: AdamW, warm-up + cosine learning rate, gradient clipping and accumulation,
periodic evaluation, a loss history for plots, and atomic checkpoints (nanoGPT's train.py, as a class).

`Trainer(model, data, TrainConfig(...)).train()` runs it; `data` is a `TokenDataset` or any callable
`get_batch(split, batch_size, block_size, generator) -> (x, y)`, so other data sources plug in.
The same loop drives every layout: pass the rank's ParallelContext (`Trainer(..., ctx=ctx)` inside
`launch` or torchrun) and it trains this rank's share of the model (minimt.parallel.layout) with
tensor, pipeline (any schedule) and data parallelism, 16-bit weights with fp32 masters and loss
scaling, and mesh-aware clipping; batch_size is the global batch, so every layout trains the same
model on the same data. The run's settings are `TrainConfig` (minimt.train_config), its learning
rate `lr_at` (minimt.lr_schedule); both are importable from here too.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoint_file import atomic_save, check_same_model_config, load_checkpoint
from .data_checks import check_token_data
from .lr_schedule import lr_at
from .parallel.context import ParallelContext
from .parallel.grads import MeshGradients
from .parallel.layout import MeshModel
from .parallel.sharded_adamw import ShardedAdamW
from .parallel.zero import DistributedOptimizer
from .precision import DynamicLossScaler, MixedPrecisionOptimizer
from .train_config import AUTOCAST_DTYPES, TrainConfig, check_device

# the public names, wherever they are defined (the config and the schedule have their own files)
__all__ = ["AUTOCAST_DTYPES", "NonFiniteLoss", "TrainConfig", "Trainer", "autocast_context",
           "batch_losses", "configure_adamw", "load_checkpoint", "lr_at"]


class NonFiniteLoss(FloatingPointError):
    """The loss or gradient norm became inf/NaN outside loss scaling: the run cannot go on."""


def configure_adamw(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D tensors only (matmul weights, embeddings), not on
    LayerNorm gains or biases (as nanoGPT); tied weights appear once (named_parameters dedups)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kind = {"fused": True} if config.fused_adamw else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2),
                             **kind)


def autocast_context(device: str, dtype_name: str | None):
    """torch.autocast for `dtype_name` ("bfloat16"/"float16"), or a no-op for None (fp32)."""
    if dtype_name is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[dtype_name])


@torch.no_grad()
def batch_losses(model: nn.Module, get_batch: Callable, split: str, n_batches: int,
                 batch_size: int, block_size: int, generator: torch.Generator,
                 autocast_dtype: str | None = None, device: str = "cpu") -> torch.Tensor:
    """(n_batches,) mean loss of each of n_batches random batches of `split`, in eval mode."""
    was_training = model.training
    model.eval()
    losses = torch.empty(n_batches)
    for k in range(n_batches):
        x, y = get_batch(split, batch_size, block_size, generator)  # (B, T), (B, T)
        with autocast_context(device, autocast_dtype):
            _, loss = model(x.to(device), y.to(device))
        losses[k] = loss.float().item()
    model.train(was_training)
    return losses


class Trainer:
    """Runs `config.max_iters` AdamW steps on `model` with batches from `data`.

    History: `self.history["train"]` holds (iter, loss) per step (the mean over the accumulated
    micro-batches), `self.history["val"]` and `["train_eval"]` (iter, mean loss over eval_iters
    batches). Batches come from a torch.Generator seeded with `config.seed`, so the same seed and
    the same initial model give the same history. Dropout draws from torch's global RNG (seed it
    with torch.manual_seed); checkpoints save both.

    ctx: this rank's ParallelContext (None = one process). `model` is then the whole serial GPT,
    built from the same seed on every rank; the Trainer cuts out this rank's share (MeshModel).
    Every rank draws the same global batch and keeps its 1/dp rows, so losses and weights follow
    the serial run. loss_scaler: "auto" = dynamic loss scaling when fp16 is involved (dtype or
    autocast), None = none, or a StaticLossScaler / DynamicLossScaler.
    """

    def __init__(self, model: nn.Module, data, config: TrainConfig | None = None,
                 ctx: ParallelContext | None = None, loss_scaler="auto"):
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}; for a "
                            f"dict of settings use TrainConfig(**settings)")
        self.config = config or TrainConfig()
        check_device(self.config.device)
        if callable(getattr(data, "get_batch", None)):
            self.get_batch = data.get_batch
        elif callable(data):
            self.get_batch = data
        else:
            raise TypeError(f"data must be a dataset with .get_batch(split, batch_size, block_size, "
                            f"generator) or such a callable; got {type(data).__name__}")
        self.train_batch = getattr(data, "train_batch", None)  # samples in Megatron's order
        model_block = getattr(getattr(model, "config", None), "block_size", None)
        self.block_size = self.config.block_size or model_block
        if self.block_size is None:
            raise ValueError("TrainConfig.block_size is None and the model has no config.block_size; "
                             "set TrainConfig(block_size=...)")
        if model_block is not None and self.block_size > model_block:
            raise ValueError(f"TrainConfig.block_size={self.block_size} exceeds the model's "
                             f"block_size={model_block}; use block_size <= {model_block}")
        check_token_data(data, self.block_size,
                         getattr(getattr(model, "config", None), "vocab_size", None))
        cfg = self.config
        self.ctx = ctx or ParallelContext(device=cfg.device)
        self.device = self.ctx.device
        self.mesh = MeshModel(model, self.ctx, cfg.batch_size, cfg.schedule, cfg.num_microbatches,
                              cfg.num_chunks, AUTOCAST_DTYPES[cfg.dtype] or torch.float32,
                              zero=cfg.zero)
        self.model = model
        self.grads = MeshGradients(self.ctx)
        if loss_scaler == "auto":
            loss_scaler = DynamicLossScaler() if "float16" in (cfg.dtype, cfg.autocast_dtype) else None
        self.loss_scaler = loss_scaler
        # who clips and skips: ZeRO-1's optimizer and MixedPrecisionOptimizer do it in step()
        self.mixed_precision = cfg.dtype is not None or loss_scaler is not None
        self.optimizer_checks = cfg.zero or self.mixed_precision
        if cfg.zero and self.ctx.dp_size == 1:
            warnings.warn(f"TrainConfig.zero={cfg.zero!r} (--zero) with one data-parallel replica "
                          "shards nothing: each rank keeps the whole optimizer state; use dp > 1 "
                          "for ZeRO to divide it", stacklevel=2)
        if cfg.zero >= 2:  # ZeRO-2/3: AdamW on this rank's pieces of every unit
            self.optimizer = ShardedAdamW(
                self.mesh.sharded, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                weight_decay=cfg.weight_decay, decay_filter=lambda p: p.dim() >= 2,
                grad_clip=cfg.grad_clip, loss_scaler=loss_scaler)
        elif cfg.zero:  # AdamW on this rank's 1/dp shard (fp32 master for 16-bit weights)
            self.optimizer = DistributedOptimizer(
                self.mesh.chunks, self.ctx, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                weight_decay=cfg.weight_decay, decay_filter=lambda p: p.dim() >= 2,
                grad_clip=cfg.grad_clip, loss_scaler=loss_scaler)
        elif self.optimizer_checks:  # fp32 master weights, loss scaling, mesh-aware checks
            self.optimizer = MixedPrecisionOptimizer(configure_adamw(self.mesh.module, cfg),
                                                     loss_scaler, clip_grad=cfg.grad_clip or None,
                                                     grads=self.grads)
        else:
            self.optimizer = configure_adamw(self.mesh.module, cfg)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.iter_num = 0
        self.history = {"train": [], "val": [], "train_eval": []}
        self.last_grad_norm = None  # global gradient norm before clipping, of the last step
        self.last_step_skipped = False  # True when loss scaling found inf/NaN and skipped a step
        self.progress_file = None  # where the progress bar goes (None: stderr)

    @property
    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups (for the learning rate), whichever wraps AdamW."""
        return getattr(self.optimizer, "optimizer", self.optimizer).param_groups

    @property
    def loss_scale(self) -> float:
        """The current loss scale S (1.0 without loss scaling)."""
        return 1.0 if self.loss_scaler is None else self.loss_scaler.scale

    def forward_backward(self) -> torch.Tensor | None:
        """The gradient_accumulation_steps micro-steps of one optimizer step: each draws the
        global micro-batch and runs this rank's rows; returns this rank's mean loss (None off the
        last pipeline stage). Gradients are complete (tied, averaged) afterwards."""
        cfg = self.config
        losses = []
        micro_steps = cfg.ramp.micro_steps(self.iter_num) if cfg.ramp else \
            cfg.gradient_accumulation_steps  # a batch-size ramp grows the micro-steps
        for k in range(micro_steps):
            x, y = self._train_batch(k)
            x, y = self.mesh.local_batch(x, y)                        # (B/dp, T)
            with autocast_context(self.device, cfg.autocast_dtype):
                loss = self.mesh.forward_backward(x, y, self.loss_scale, last=k == micro_steps - 1)
            if loss is not None:
                losses.append(loss.float())
        # mean of k equal micro-batch means = mean over the whole k*B batch
        self.mesh.finish_gradients(micro_steps)
        return torch.stack(losses).mean() if losses else None

    def _train_batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-step k's global batch: the next samples in order from data with a
        `train_batch(first_sample, count)` (Megatron's samples), else a random draw."""
        cfg = self.config
        if self.train_batch is None:
            return self.get_batch("train", cfg.batch_size, self.block_size, self.generator)
        consumed = cfg.ramp.consumed(self.iter_num) if cfg.ramp else \
            self.iter_num * cfg.batch_size * cfg.gradient_accumulation_steps
        return self.train_batch(consumed + k * cfg.batch_size, cfg.batch_size)

    def train_step(self) -> torch.Tensor:
        """One optimizer step over gradient_accumulation_steps micro-batches; returns the mean
        micro-batch loss of the global batch as a 0-d tensor (no .item(): no device sync)."""
        self.zero_grad()
        loss = self.forward_backward()
        self.optimizer_step()
        return self.mesh.global_mean(loss)

    def zero_grad(self) -> None:
        """Forget the last step's gradients and set this step's learning rate."""
        for group in self.param_groups:
            group["lr"] = self.config.lr(self.iter_num)
        self.optimizer.zero_grad()

    def optimizer_step(self) -> None:
        """Clip (over the whole mesh) and step; with loss scaling or ZeRO-1 the optimizer also
        unscales, checks for inf/NaN on every rank and skips the step if any (ZeRO: after
        averaging the gradients over dp itself)."""
        if self.optimizer_checks:
            self.last_step_skipped = not self.optimizer.step()
            self.last_grad_norm = getattr(self.optimizer, "last_grad_norm", None)
        else:
            if self.config.grad_clip > 0:
                self.last_grad_norm = self.grads.clip_grad_norm(self.mesh.parameters(),
                                                                self.config.grad_clip)
            self.optimizer.step()
        self.iter_num += 1

    def evaluate(self, eval_iters: int | None = None) -> dict[str, float]:
        """Mean loss over eval_iters batches of each split. The batches come from a generator
        re-seeded every call, so every evaluation sees the same batches (a smoother curve)."""
        cfg = self.config
        n = eval_iters or cfg.eval_iters
        was_training = self.mesh.module.training
        self.mesh.module.eval()
        out = {}
        for k, split in enumerate(("train", "val")):
            gen = torch.Generator().manual_seed(cfg.seed + 1 + k)
            losses = []
            for _ in range(n):
                x, y = self.mesh.local_batch(*self.get_batch(split, cfg.batch_size,
                                                             self.block_size, gen))
                with autocast_context(self.device, cfg.autocast_dtype):
                    loss = self.mesh.loss(x, y)
                if loss is not None:
                    losses.append(loss.float())
            mean = torch.stack(losses).mean() if losses else None
            out[split] = self.mesh.global_mean(mean).item()
        self.mesh.module.train(was_training)
        return out

    def _record_eval(self):
        losses = self.evaluate()
        self.history["val"].append((self.iter_num, losses["val"]))
        self.history["train_eval"].append((self.iter_num, losses["train"]))
        return losses

    def train(self, num_iters: int | None = None, evaluate: bool = True) -> dict:
        """Run until iteration config.max_iters (or `num_iters` more steps); return the history.
        Evaluates every eval_interval steps and after the last step (unless `evaluate=False`), so
        a run split into pieces has the same history as one run."""
        cfg = self.config
        stop = cfg.max_iters if num_iters is None else min(cfg.max_iters, self.iter_num + num_iters)
        self.mesh.module.train()
        pending = []  # (iter, 0-d loss tensor) not yet turned into floats
        bar = tqdm(total=stop - self.iter_num, disable=not cfg.progress or self.ctx.rank != 0,
                   desc="train", file=self.progress_file, mininterval=1.0)
        while self.iter_num < stop:
            if evaluate and self.iter_num % cfg.eval_interval == 0:
                if not self.history["val"] or self.history["val"][-1][0] != self.iter_num:
                    self._record_eval()
            it = self.iter_num
            pending.append((it, self.train_step()))
            bar.update(1)
            if len(pending) >= cfg.log_interval or self.iter_num == stop:
                values = torch.stack([loss for _, loss in pending]).tolist()  # one sync
                self._stop_if_diverged([i for i, _ in pending], values)
                self.history["train"].extend(zip([i for i, _ in pending], values))
                pending.clear()
                postfix = {"loss": f"{values[-1]:.3f}", "lr": f"{cfg.lr(it):.2e}"}
                if self.history["val"]:
                    postfix["val"] = f"{self.history['val'][-1][1]:.3f}"
                bar.set_postfix(postfix, refresh=False)
        bar.close()
        evaluated_now = bool(self.history["val"]) and self.history["val"][-1][0] == self.iter_num
        if evaluate and self.iter_num == cfg.max_iters and not evaluated_now:
            self._record_eval()
        return self.history

    def _stop_if_diverged(self, steps: list[int], losses: list[float]) -> None:
        """A non-finite loss, or gradient norm without loss scaling (which skips such steps
        itself), ends the run before anything is saved: its weights are garbage."""
        norm = self.last_grad_norm if self.loss_scaler is None else None
        norm = None if norm is None else float(norm)
        bad = next(((it, f"loss is {v}") for it, v in zip(steps, losses)
                    if not torch.isfinite(torch.tensor(v))), None)
        if bad is None and norm is not None and not torch.isfinite(torch.tensor(norm)):
            bad = (steps[-1], f"gradient norm is {norm}")
        if bad is not None:
            lr = self.config.lr(bad[0])
            raise NonFiniteLoss(
                f"training diverged: the {bad[1]} at step {bad[0]} (learning rate {lr:.3g}); the "
                f"learning rate is most likely too large: lower --lr (TrainConfig.learning_rate, "
                f"e.g. 1e-3 or 3e-4). The run stopped and nothing was saved")

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write model, optimizer, iteration, configs, history and RNG states to `path`
        atomically (a temp file in the same folder, then os.replace): a crash leaves the old file.
        One process only; a mesh writes minimt.parallel.checkpoint's layout-free checkpoints."""
        self._refuse_mesh("save_checkpoint")
        model_config = getattr(self.model, "config", None)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iter_num": self.iter_num,
            "train_config": self.config.to_dict(),
            "model_config": asdict(model_config) if model_config is not None else None,
            "history": {k: list(v) for k, v in self.history.items()},
            "rng": {"batch": self.generator.get_state(), "torch": torch.get_rng_state()},
        }
        atomic_save(state, path)

    def load_checkpoint(self, path: str | os.PathLike) -> dict:
        """Restore a checkpoint written by save_checkpoint into this trainer (same model shape);
        training then continues exactly as if never stopped. Returns the raw checkpoint dict."""
        self._refuse_mesh("load_checkpoint")
        state = load_checkpoint(path)
        check_same_model_config(path, state["model_config"], getattr(self.model, "config", None))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iter_num = state["iter_num"]
        self.history = {k: [tuple(p) for p in v] for k, v in state["history"].items()}
        self.generator.set_state(state["rng"]["batch"])
        torch.set_rng_state(state["rng"]["torch"])
        return state

    def _refuse_mesh(self, what: str) -> None:
        if self.ctx.world_size > 1 or self.mixed_precision:
            raise ValueError(f"Trainer.{what} writes one process's fp32 state; on a mesh or in 16 "
                             f"bits use minimt.parallel.checkpoint.{what}(directory, "
                             f"trainer.mesh.chunks, trainer.optimizer, ctx), which any layout reads")

