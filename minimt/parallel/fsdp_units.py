"""How ZeRO-2/3 (minimt.parallel.fsdp) cut a GPT into units, and the layouts they run.

A unit is a group of parameters laid end to end in one flat buffer, padded to a multiple of dp:
the tied embedding / output weight alone (so the first and the last pipeline stage hold the same
piece of it), then per module (a GPT, or each pipeline chunk) the rest outside the blocks, then
each transformer block."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..model import GPT
from .context import ParallelContext
from .data_parallel import unique_parameters

TIED_PREFIXES = ("transformer.wte.", "lm_head.")  # the embedding and the output layer: one weight


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
        self.ready: set[int] = set()                                   # params whose grad is in


def blocks(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a GPT (a ModuleList) or of a pipeline chunk (a ModuleDict)."""
    h = module.transformer.h
    return list(h.values()) if isinstance(h, nn.ModuleDict) else list(h)


def check_zero_layout(stage: int, pp: int) -> None:
    """Refuse, saying why and what to use, the layouts ZeRO-2/3 here do not run."""
    if stage == 3 and pp > 1:
        raise ValueError(
            f"ZeRO-3 with pipeline parallelism (pp={pp}) is refused: a pipeline stage runs the "
            f"forwards of several micro-batches before their backwards, so ZeRO-3 would "
            f"all-gather each layer once per micro-batch in forward and again in backward (2m "
            f"gathers a step instead of 2) or keep every layer gathered anyway; DeepSpeed refuses "
            f"ZeRO-2/3 with its pipeline engine too. Use zero=2 (or 1) with pp > 1, or pp=1 with "
            f"zero=3")


def check_fsdp_layout(modules: list[nn.Module], ctx: ParallelContext, stage: int) -> None:
    """What this implementation shards: a GPT at any tp, or (ZeRO-2) this rank's pipeline chunks."""
    if stage not in (2, 3):
        raise ValueError(f"stage={stage!r}: FullyShardedDataParallel runs ZeRO stage 2 or 3 "
                         f"(stage 1 is DistributedOptimizer)")
    if not all(hasattr(getattr(m, "transformer", None), "h") for m in modules):
        raise TypeError(f"FullyShardedDataParallel needs a minimt GPT (or, with pp > 1, this "
                        f"rank's list of GPTStage chunks), got {type(modules[0]).__name__}")
    check_zero_layout(stage, ctx.pp_size)
    if ctx.pp_size > 1 and len(modules) == 1 and isinstance(modules[0], GPT):
        raise ValueError(f"pp={ctx.pp_size}: pass this rank's pipeline chunks (MeshModel.chunks), "
                         f"not the whole GPT")


def keeps(keep, param: nn.Parameter, shape: torch.Size) -> bool:
    """keep(param) on a parameter that has its full shape for the call."""
    if param.shape == shape:
        return keep(param)
    freed = param.data
    param.data = torch.zeros((), dtype=freed.dtype, device=freed.device).expand(shape)
    try:
        return keep(param)
    finally:
        param.data = freed


def unit_groups(modules: list[nn.Module]) -> list[list[nn.Parameter]]:
    """The units' parameters: the tied weight alone (the same unit on the first and last
    pipeline stage), then per module the rest outside the blocks, then each block."""
    names = [(n, p) for m in modules for n, p in m.named_parameters(remove_duplicate=False)
             if p.requires_grad]
    tied = list({id(p): p for n, p in names if n.startswith(TIED_PREFIXES)}.values())
    groups = [tied]
    for module in modules:
        chunk_blocks = blocks(module)
        inside = {id(p) for block in chunk_blocks for p in block.parameters()}
        taken = {id(p) for group in groups for p in group}
        groups.append([p for p in unique_parameters(module)
                       if id(p) not in inside and id(p) not in taken])
        groups += [list(block.parameters()) for block in chunk_blocks]
    return [group for group in groups if group]
