"""One rank's share of a GPT on the (dp, pp, tp) mesh, behind the few calls a training loop needs.

`MeshModel(model, ctx, ...)` takes the serial GPT (built identically on every rank from one seed)
and turns it into this rank's part: tensor parallelism slices its weights (apply_tensor_parallel),
pipeline parallelism keeps this rank's chunks of blocks (GPTStage), data parallelism gives each
replica 1/dp of every batch and averages the gradients (DistributedDataParallel, or ZeRO-1's
DistributedOptimizer, which does it in its step). `forward_backward` runs one micro-step (a
pipeline schedule when pp > 1), `finish_gradients` completes the gradients once per optimizer
step, and `loss` evaluates. With one rank all of it is the serial model's own forward/backward.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from ..model import GPT
from . import comm
from .context import ParallelContext, divide
from .context_parallel_gpt import (apply_context_parallel, average_over_cp,
                                   check_context_parallel, local_sequence)
from .data_parallel import DistributedDataParallel
from .fsdp import FullyShardedDataParallel
from .fsdp_units import check_zero_layout
from .pipeline import PIPELINE_SCHEDULES, pipeline_schedule, stage_owner
from .pipeline_runtime import (GPTStage, mark_tied_copy, pipeline_forward, pipeline_step,
                               stage_parameters, sync_tied_grads)
from .tensor import apply_tensor_parallel
from .zero_bubble_runtime import build_zb_stages, zb_owner, zero_bubble_step


class ScaledLoss:
    """The model's loss in fp32 (from 16-bit logits too, as Megatron-LM), times `scale` (the
    loss scale while training, 1 when evaluating). Multiplying where the loss is computed also
    scales a pipeline's backward, which starts on the last stage."""

    def __init__(self, loss_fn):
        self.loss_fn, self.scale = loss_fn, 1.0

    def __call__(self, logits, targets):
        return self.loss_fn(logits.float(), targets) * self.scale


def check_layout(config, tp: int, pp: int, dp: int, batch_size: int, schedule: str = "1f1b",
                 num_microbatches: int | None = None, num_chunks: int = 1, cp: int = 1,
                 zero: int = 0) -> int:
    """Raise a ValueError saying what to change unless the mesh divides the model and the batch;
    returns the pipeline's micro-batches per step (default: 2 * pp)."""
    divide(config.n_head, tp, "n_head", "--tp (tensor-parallel size)")
    check_context_parallel(config, cp)
    check_zero_layout(zero, pp)
    divide(config.mlp_ratio * config.n_embd, tp, "MLP hidden size", "--tp (tensor-parallel size)")
    if schedule not in PIPELINE_SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: choose one of {PIPELINE_SCHEDULES}")
    if schedule not in ("interleaved", "zbv") and num_chunks != 1:
        raise ValueError(f"num_chunks={num_chunks} needs the 'interleaved' schedule")
    if pp * num_chunks > config.n_layer:
        raise ValueError(f"--pp {pp} x {num_chunks} chunk(s) = {pp * num_chunks} pipeline stages "
                         f"for n_layer={config.n_layer} blocks: use at most {config.n_layer} stages")
    local = divide(batch_size, dp, "batch size", "--dp (data-parallel size)")
    if pp == 1:
        return 1
    m = num_microbatches or (1 if schedule == "naive" else 2 * pp)
    if local % m:
        raise ValueError(f"each data-parallel replica gets batch_size/dp = {batch_size}/{dp} = "
                         f"{local} sequences, not divisible into {m} pipeline micro-batches; use "
                         f"a batch size that is a multiple of dp * m = {dp * m}")
    pipeline_schedule(schedule, pp, m, num_chunks)  # its own checks (interleaved: m % pp)
    return m


class MeshModel:
    """This rank's share of `model` on `ctx`'s mesh (see the module doc); the parameters it holds
    are `self.module`'s, the modules the optimizer and the data-parallel wrapper see."""

    def __init__(self, model: GPT, ctx: ParallelContext, batch_size: int,
                 schedule: str = "1f1b", num_microbatches: int | None = None,
                 num_chunks: int = 1, dtype: torch.dtype = torch.float32, zero: int = 0,
                 bucket_size_mb: float = 25.0):
        self.ctx, self.model = ctx, model
        self.num_microbatches = check_layout(model.config, ctx.tp_size, ctx.pp_size, ctx.dp_size,
                                             batch_size, schedule,
                                             num_microbatches, num_chunks, ctx.cp_size, zero)
        if ctx.tp_size > 1:
            apply_tensor_parallel(model, ctx)
        model.to(device=ctx.device, dtype=dtype)
        model.loss_fn = self.loss_fn = ScaledLoss(model.loss_fn)
        if ctx.pp_size == 1:
            self.stages, self.module = None, model
        else:
            num_virtual = ctx.pp_size * num_chunks
            self.zero_bubble = schedule in ("zb-h1", "zbv")
            self.stages = (build_zb_stages(model, schedule, ctx.pp_rank, ctx.pp_size)
                           if self.zero_bubble else
                           [GPTStage(model, c * ctx.pp_size + ctx.pp_rank, num_virtual)
                            for c in range(num_chunks)])
            self.tied_apart = schedule != "zbv"  # ZB-V holds the first and last stage on rank 0
            self.module = nn.ModuleList(self.stages)
            self.schedule = pipeline_schedule(schedule, ctx.pp_size, self.num_microbatches,
                                              num_chunks)
            if self.tied_apart:
                mark_tied_copy(self.stages, ctx)  # the first stage counts the tie in the norm
        if ctx.cp_size > 1:
            apply_context_parallel(model, ctx, self.stages or ())
        # ZeRO-1's optimizer averages the gradients itself, ZeRO-2/3 reduce-scatter them in
        # backward (self.sharded); otherwise DDP does, in buckets
        self.sharded = (FullyShardedDataParallel(self.stages or model, ctx, stage=zero)
                        if zero >= 2 else None)
        self.ddp = (DistributedDataParallel(self.stages or model, ctx, bucket_size_mb)
                    if ctx.dp_size > 1 and not zero else None)

    @property
    def chunks(self):
        """What the optimizer is built on: the model, or this rank's list of pipeline chunks."""
        return self.stages or self.model

    def parameters(self) -> list[nn.Parameter]:
        """The parameters this rank holds and updates, each once."""
        return stage_parameters(self.stages) if self.stages else list(self.model.parameters())

    def local_batch(self, x: torch.Tensor, y: torch.Tensor):
        """This data-parallel replica's rows of a global batch x, y (B, T) -> (B/dp, T), and
        this context-parallel rank's columns of them (B/dp, T/cp)."""
        rows = x.shape[0] // self.ctx.dp_size
        start = self.ctx.dp_rank * rows
        x, y = (local_sequence(t[start:start + rows], self.ctx) for t in (x, y))
        return x.to(self.ctx.device), y.to(self.ctx.device)

    def forward_backward(self, x, y, scale: float = 1.0, last: bool = True) -> torch.Tensor | None:
        """Forward and backward of `scale` * the loss on this replica's rows (B/dp, T);
        gradients accumulate. Returns the unscaled mean loss (0-d), None off the last stage.
        DDP overlaps its all-reduces with the backward of the `last` micro-step of a serial
        stack; a pipeline's schedule runs many backwards, so it syncs afterwards instead."""
        self.loss_fn.scale = scale
        overlap = self.ddp is not None and last and self.stages is None
        with contextlib.nullcontext() if overlap or self.ddp is None else self.ddp.no_sync():
            if self.stages is None:
                _, loss = self.model(x, y)
                loss.backward()
                loss = loss.detach()
            else:
                step = zero_bubble_step if self.zero_bubble else pipeline_step
                record = step(self.stages, self.schedule, self.ctx, x, y)
                loss = None if record.loss is None else torch.tensor(record.loss, device=x.device)
        self.loss_fn.scale = 1.0
        return None if loss is None else loss / scale

    def finish_gradients(self, accumulation_steps: int = 1) -> None:
        """After the last micro-step: sum the tied weight's gradients between the first and last
        stage, average over the data-parallel replicas where the backward has not (a pipeline),
        and divide by the number of micro-steps (the gradient of the mean loss over the global
        batch). ZeRO-1's optimizer averages over dp in its step."""
        if self.sharded is not None:  # ZeRO-2/3: gradients already live in the shard
            self.sharded.flush_gradients()
        if self.stages is not None:
            if self.tied_apart:
                sync_tied_grads(self.stages, self.ctx,
                                grad_of=self.sharded and self.sharded.grad_piece)
            if self.ddp is not None:
                self.ddp.sync_gradients()
        # ZeRO-2/3 keep the gradient only in their shard
        average_over_cp([p.grad for p in self.parameters()]
                        + ([self.sharded.grad_shard] if self.sharded is not None else []), self.ctx)
        if accumulation_steps > 1 and self.sharded is not None:  # ZeRO-2/3: the gradient shard
            self.sharded.grad_shard.div_(accumulation_steps)
        elif accumulation_steps > 1:
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.div_(accumulation_steps)

    @torch.no_grad()
    def loss(self, x, y) -> torch.Tensor | None:
        """Mean loss of this replica's rows (0-d) on the last pipeline stage, None elsewhere."""
        if self.stages is None:
            return self.model(x, y)[1]
        owner = zb_owner("zbv") if not self.tied_apart else stage_owner
        return pipeline_forward(self.stages, self.ctx, x, y, owner)

    def global_mean(self, loss: torch.Tensor | None) -> torch.Tensor:
        """The mean over the data-parallel replicas of a loss held by the last pipeline stage,
        on every rank (0-d): the serial model's loss on the whole global batch."""
        value = torch.zeros(1, device=self.ctx.device) if loss is None else loss.reshape(1).clone()
        comm.all_reduce(value, self.ctx, "pp")
        comm.all_reduce(value, self.ctx, "dp")
        comm.all_reduce(value, self.ctx, "cp")  # the mean of the cp ranks' equal token counts
        return value[0] / (self.ctx.dp_size * self.ctx.cp_size)

