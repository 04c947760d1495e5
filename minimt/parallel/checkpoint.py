"""Checkpoints that change layout: written by any (tp, pp, dp) mesh, with or without ZeRO, read
by any other, by the serial model, or turned into a Hugging Face GPT-2 state dict.

The format is the serial model's own state dict, split by pipeline stage: each stage's tensors
are gathered over the tensor-parallel group (and ZeRO's moments over the data-parallel group)
into the full tensors the serial GPT would hold, under its names. A layout is then only a way of
slicing them again on load. We chose this over torch.distributed.checkpoint (sharded files,
resharding through DTensor metadata) because minimt's shards are not plain slices of the serial
tensors (the fused QKV projection is regrouped by heads, the vocabulary is padded to a multiple
of tp), and a course-sized model fits in one process; Megatron-LM's "torch_dist" format is the
sharded way. A checkpoint directory:

    DIR/latest                    the name of the newest complete step folder (written last)
    DIR/iter_0000042/meta.json    step, the layout it was written at, config, dtype, optimizer
    DIR/iter_0000042/model_pp0.pt {serial name: full tensor} of pipeline stage 0 (and pp1, ...)
    DIR/iter_0000042/optim_pp0.pt {serial name: {"exp_avg", "exp_avg_sq"[, "master"]}}
    DIR/iter_0000042/extra.pt     what the caller passed as `extra` (rank 0's), if anything

Saves are atomic: files go to a hidden folder renamed into place, then `latest` is replaced; a
step saved again moves its old folder to `.old-iter_N` first and the loader falls back to it, so
a save killed at any instant leaves a complete checkpoint. Loads use torch.load(weights_only=True):
tensors and containers only, never pickled code. fp16 runs keep their loss scaler's state in meta.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint_file import check_same_model_config, read_file, write_error
from ..config import GPTConfig
from ..model import GPT
from .comm import all_gather, barrier
from .context import ParallelContext, check_ctx
from .tensor import padded_vocab_size, qkv_part_major, qkv_rank_major
from .checkpoint_checks import (check_dtype, check_optimizer, check_step, collective,
                                not_a_checkpoint_folder, scaler_state)
from .zero import DistributedOptimizer

FORMAT = "minimt-serial-state-v1"
EMBEDDING = "transformer.wte.weight"  # the output layer is tied to it: one tensor in the file


def _modules(model) -> list[nn.Module]:
    """A model, a wrapper with `.module` (data parallel), or a list of pipeline chunks."""
    model = getattr(model, "module", model)
    return list(model) if isinstance(model, (list, tuple, nn.ModuleList)) else [model]


def local_parameters(model) -> list[tuple[str, nn.Parameter, bool]]:
    """(serial name, parameter, is_tied_copy) of every parameter this rank holds, each once.
    is_tied_copy marks a last pipeline stage's copy of the embedding (its output layer): a
    parameter reachable only as lm_head.weight (or lm_head.embedding.weight under tp)."""
    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for module in _modules(model):
        for name, param in module.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(name)
            params[id(param)] = param
    out = []
    for key, param in params.items():
        own = [n for n in names[key] if not n.startswith("lm_head.")]
        out.append((own[0] if own else EMBEDDING, param, not own))
    return out


def find_config(model, config: GPTConfig | None = None) -> GPTConfig:
    """`config`, or the GPTConfig of the model (or of any pipeline chunk)."""
    if config is not None and not isinstance(config, GPTConfig):
        raise TypeError(f"config={config!r} must be a GPTConfig (or None to take the model's), "
                        f"e.g. config=model.config")
    config = config or next((m.config for m in _modules(model)
                             if isinstance(getattr(m, "config", None), GPTConfig)), None)
    if config is None:
        raise ValueError("cannot find the model's GPTConfig (pipeline chunks carry none): "
                         "pass config=... to save_checkpoint / load_checkpoint")
    return config


def _kind(name: str) -> str:
    return ("qkv" if name.endswith(("attn.c_attn.weight", "attn.c_attn.bias"))
            else "vocab" if name == EMBEDDING else "plain")


def unshard(name: str, local: torch.Tensor, param: nn.Parameter, ctx: ParallelContext,
            config: GPTConfig) -> torch.Tensor:
    """This rank's tensor-parallel slice -> the serial model's full tensor (collective over tp)."""
    if not getattr(param, "tensor_model_parallel", False) or ctx.tp_size == 1:
        return local.detach().clone()
    full = all_gather(local.detach(), ctx, "tp", dim=param.partition_dim)
    if _kind(name) == "qkv":
        full = qkv_part_major(full, ctx.tp_size)
    return full[:config.vocab_size] if _kind(name) == "vocab" else full


def shard(name: str, full: torch.Tensor, param: nn.Parameter, ctx: ParallelContext) -> torch.Tensor:
    """The serial model's full tensor -> this rank's tensor-parallel slice (no communication)."""
    if not getattr(param, "tensor_model_parallel", False) or ctx.tp_size == 1:
        return full
    if _kind(name) == "vocab":
        full = F.pad(full, (0, 0, 0, padded_vocab_size(full.shape[0], ctx.tp_size) - full.shape[0]))
    if _kind(name) == "qkv":
        full = qkv_rank_major(full, ctx.tp_size)
    dim = param.partition_dim
    size = full.shape[dim] // ctx.tp_size
    return full.narrow(dim, ctx.tp_rank * size, size)


def full_state_dict(model, ctx: ParallelContext, config: GPTConfig | None = None) -> dict:
    """{serial name: full tensor} of the parameters of this rank's pipeline stage(s); every tp
    rank must call it (it gathers over tp). The union over stages is the serial state dict."""
    config = find_config(model, config)
    sharded = _zero_sharded(model)
    # ZeRO-2/3: the fp32 master pieces gathered over dp (then tp), in the weights' dtype
    local = {} if sharded is None else {key: t.to(sharded.param_dtype)
                                        for key, t in sharded.param_tensors().items()}
    return {name: unshard(name, local.get(id(p), p), p, ctx, config)
            for name, p, tied in local_parameters(model) if not tied}


def _zero_sharded(model):
    """The FullyShardedDataParallel (ZeRO-2/3) that holds this model's pieces, or None."""
    return getattr(_modules(model)[0], "zero_sharded", None)


def _optimizer_state(model, optimizer, ctx, config) -> tuple[dict, int]:
    """({serial name: {"exp_avg", "exp_avg_sq"[, "master"]}} of this stage, step count)."""
    params = local_parameters(model)
    sharded = _zero_sharded(model)
    if sharded is not None:  # ZeRO-2/3's ShardedAdamW: its pieces gathered over dp
        keys = ("exp_avg", "exp_avg_sq") + (("master",) if optimizer.dtype != torch.float32 else ())
        full = {key: sharded.param_tensors(getattr(optimizer, key)) for key in keys}
        per_param = {id(p): {key: full[key][id(p)] for key in keys} for _, p, _ in params}
        step = optimizer.num_steps
    elif isinstance(optimizer, DistributedOptimizer):
        flat = {key: all_gather(t, ctx, "dp", dim=0) for key, t in
                (("exp_avg", optimizer.exp_avg), ("exp_avg_sq", optimizer.exp_avg_sq),
                 ("master", optimizer.master)) if key != "master" or optimizer.dtype != torch.float32}
        where = {id(p): (start, end) for p, start, end in optimizer.segments}
        per_param = {id(p): {key: t[where[id(p)][0]:where[id(p)][1]].view_as(p)
                             for key, t in flat.items()} for _, p, _ in params}
        step = optimizer.num_steps
    else:  # torch.optim.AdamW, possibly inside minimt.precision's MixedPrecisionOptimizer
        inner, masters = _inner_and_masters(optimizer, params)
        per_param = {id(p): {key: inner.state[masters[id(p)]][key]
                             for key in ("exp_avg", "exp_avg_sq")}
                     for _, p, _ in params if masters[id(p)] in inner.state}
        for _, p, _ in params:
            if masters[id(p)] is not p and id(p) in per_param:
                per_param[id(p)]["master"] = masters[id(p)].detach()
        steps = [int(inner.state[m]["step"]) for m in masters.values() if m in inner.state]
        step = max(steps, default=0)
    state = {name: {key: unshard(name, t, p, ctx, config) for key, t in per_param[id(p)].items()}
             for name, p, tied in params if not tied and id(p) in per_param}
    return state, step


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(directory, model, optimizer, ctx: ParallelContext, step: int = 0,
                    config: GPTConfig | None = None, extra: dict | None = None) -> Path:
    """Write model (and optimizer: torch.optim.AdamW, alone or in minimt.precision's
    MixedPrecisionOptimizer, or DistributedOptimizer, or None) at `step`
    into directory/iter_{step:07d} in the serial layout; collective: every rank calls it.
    Returns the step folder. `extra` (tensors, numbers, strings: e.g. RNG states) is rank 0's."""
    step = check_step(step)
    check_ctx(ctx, "save_checkpoint")
    check_optimizer(optimizer, "save_checkpoint")
    config = find_config(model, config)
    root = Path(directory)
    final, tmp = root / f"iter_{step:07d}", root / f".tmp-iter_{step:07d}"
    if ctx.rank == 0:
        try:
            _recover(root)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except OSError as error:  # name the caller's folder, not the hidden temporary
            raise write_error(error, directory, "give a folder you can write to") from None
    try:
        collective(ctx, "save_checkpoint")
        _write(root, final, tmp, model, optimizer, ctx, step, config, extra)
    except BaseException:
        if ctx.rank == 0:  # never leave a half-written folder behind
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _recover(root: Path) -> None:
    """A save killed between its renames left `.old-iter_N` without `iter_N`: put it back."""
    (root / ".tmp-latest").unlink(missing_ok=True)
    for old in root.glob(".old-iter_*"):
        final = root / old.name.removeprefix(".old-")
        if final.exists():
            shutil.rmtree(old)
        else:
            old.rename(final)


def _write(root, final, tmp, model, optimizer, ctx, step, config, extra) -> None:
    """Every rank's part of save_checkpoint after the temporary folder exists."""
    weights = full_state_dict(model, ctx, config)
    state, num_steps = ((None, 0) if optimizer is None
                        else _optimizer_state(model, optimizer, ctx, config))
    if ctx.tp_rank == ctx.cp_rank == ctx.dp_rank == 0:  # one writer per pipeline stage
        _atomic_save(weights, tmp / f"model_pp{ctx.pp_rank}.pt")
        if state is not None:
            _atomic_save(state, tmp / f"optim_pp{ctx.pp_rank}.pt")
    if ctx.rank == 0:
        if extra is not None:
            _atomic_save(extra, tmp / "extra.pt")
        dtype = str(next(p for _, p, _ in local_parameters(model)).dtype).removeprefix("torch.")
        meta = dict(format=FORMAT, step=step, optimizer_steps=num_steps, config=asdict(config),
                    layout=dict(tp=ctx.tp_size, pp=ctx.pp_size, dp=ctx.dp_size,
                                **({"cp": ctx.cp_size} if ctx.cp_size > 1 else {}),
                                zero=getattr(_zero_sharded(model), "stage",
                                             isinstance(optimizer, DistributedOptimizer))),
                    dtype=dtype, has_optimizer=state is not None,
                    loss_scaler=scaler_state(optimizer),
                    param_groups=[{k: v for k, v in g.items() if k != "params"} for g in
                                  getattr(getattr(optimizer, "optimizer", optimizer),
                                          "param_groups", [])])
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    barrier(ctx)
    if ctx.rank == 0:
        # re-saving a step: the old folder moves aside and stays loadable (checkpoint_folder
        # falls back to it) until the new one is in place
        old = root / f".old-{final.name}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        (root / ".tmp-latest").write_text(final.name)
        os.replace(root / ".tmp-latest", root / "latest")
        shutil.rmtree(old, ignore_errors=True)
    barrier(ctx)


def checkpoint_folder(directory) -> Path:
    """The step folder `directory/latest` names, or `directory` itself if it is a step folder."""
    root = Path(directory)
    if (root / "meta.json").is_file():
        return root
    not_a_checkpoint_folder(root)
    if not (root / "latest").is_file():
        raise FileNotFoundError(f"{root} holds no checkpoint: no 'latest' file and no meta.json; "
                                f"give the folder that `python -m minimt train --out` or "
                                f"save_checkpoint(directory, ...) wrote")
    folder = root / (root / "latest").read_text().strip()
    if not (folder / "meta.json").is_file():  # a save was killed while replacing this step
        complete = [f for f in (root / f".old-{folder.name}", *sorted(root.glob("iter_*"))[::-1])
                    if (f / "meta.json").is_file()]
        if not complete:
            raise FileNotFoundError(f"{root} holds no complete checkpoint: 'latest' names "
                                    f"{folder.name}, which is missing; write it again with "
                                    f"save_checkpoint")
        folder = complete[0]
    return folder


def read_checkpoint(directory) -> tuple[dict, dict, dict | None]:
    """(meta, {serial name: tensor}, {serial name: optimizer state} or None), all stages merged."""
    folder = checkpoint_folder(directory)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{folder / 'meta.json'} is not valid JSON: the checkpoint is corrupt or "
                         f"was cut short; write it again with save_checkpoint") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder} is not a minimt checkpoint (format {meta.get('format')!r})")

    def merged(prefix):
        out = {}
        for stage in range(meta.get("layout", {}).get("pp", 1)):
            path = folder / f"{prefix}_pp{stage}.pt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"the checkpoint {folder} lacks {path.name}: it was written at pp="
                    f"{meta['layout']['pp']}, one {prefix}_pp*.pt file per pipeline stage; copy "
                    f"the whole folder, or write it again with save_checkpoint")
            out.update(read_file(path, "minimt.parallel.checkpoint.save_checkpoint"))
        return out

    return meta, merged("model"), merged("optim") if meta["has_optimizer"] else None


@torch.no_grad()
def load_checkpoint(directory, model, optimizer, ctx: ParallelContext,
                    config: GPTConfig | None = None) -> dict:
    """Load a checkpoint of any layout into this rank's model (and optimizer, if not None):
    each tensor is sliced for this rank's stage and tp rank. Returns the meta dict, with
    "extra" (the saved `extra`, or None)."""
    check_ctx(ctx, "load_checkpoint")
    check_optimizer(optimizer, "load_checkpoint")
    meta, weights, state = read_checkpoint(directory)
    config = find_config(model, config)
    check_same_model_config(directory, {**meta["config"], "dropout": config.dropout}, config,
                            "read_checkpoint(directory)[0]['config']")  # dropout: a training knob
    missing = [name for name, _, _ in local_parameters(model) if name not in weights]
    if missing:
        raise ValueError(f"the checkpoint {os.fspath(directory)!r} lacks {missing[:3]}: a "
                         f"model_pp*.pt file is missing or was cut short; write it again with "
                         f"save_checkpoint")
    if optimizer is not None and state is None:
        raise ValueError("this checkpoint holds no optimizer state: pass optimizer=None")
    check_dtype(directory, meta["dtype"], weights, local_parameters(model))
    sharded = _zero_sharded(model)
    if sharded is not None:  # ZeRO-2/3: this rank's pieces of its tp slices of the serial tensors
        sharded.load_param_tensors({id(p): shard(name, weights[name], p, ctx)
                                    for name, p, _ in local_parameters(model)})
    for name, param, _ in local_parameters(model) if sharded is None else ():
        param.copy_(shard(name, weights[name], param, ctx))
    if optimizer is not None:
        _load_optimizer(model, optimizer, state, weights, meta["optimizer_steps"], ctx)
        scaler = getattr(optimizer, "loss_scaler", None)
        for key, value in (meta.get("loss_scaler") or {}).items():
            if scaler is not None and hasattr(scaler, key):
                setattr(scaler, key, value)
    folder = checkpoint_folder(directory)
    extra = folder / "extra.pt"
    meta["extra"] = read_file(extra, "save_checkpoint") if extra.is_file() else None
    return meta


def _load_optimizer(model, optimizer, state: dict, weights: dict, num_steps: int,
                    ctx: ParallelContext) -> None:
    params = local_parameters(model)
    sharded = _zero_sharded(model)
    if sharded is not None:  # ZeRO-2/3's ShardedAdamW; fp32 checkpoints: weights are the master
        for key in ("exp_avg", "exp_avg_sq", "master"):
            sharded.load_param_tensors(
                {id(p): shard(name, _saved(state, weights, name, key), p, ctx)
                 for name, p, _ in params}, getattr(optimizer, key))
        optimizer.fsdp.after_step()
        optimizer.num_steps = num_steps
        return
    if isinstance(optimizer, DistributedOptimizer):
        where = {id(p): (start, end) for p, start, end in optimizer.segments}
        flat = {key: torch.zeros(optimizer.flat_params.numel())
                for key in ("exp_avg", "exp_avg_sq", "master")}
        for name, param, _ in params:
            start, end = where[id(param)]
            for key, t in flat.items():
                t[start:end] = shard(name, _saved(state, weights, name, key), param, ctx).flatten()
        mine = slice(optimizer.shard_start, optimizer.shard_start + optimizer.shard_size)
        for key in ("exp_avg", "exp_avg_sq", "master"):
            getattr(optimizer, key).copy_(flat[key][mine])
        optimizer.load_steps(num_steps)
        return
    inner, masters = _inner_and_masters(optimizer, params)
    for name, param, _ in params:
        if name not in state:  # saved before its first step: AdamW starts it fresh
            continue
        master = masters[id(param)]
        if master is not param:  # fp32 master of a 16-bit weight: the saved one, else the weight
            master.copy_(shard(name, state[name].get("master", weights[name]), param, ctx))
        inner.state[master] = {
            "step": torch.tensor(float(num_steps)),
            **{key: shard(name, state[name][key], param, ctx).clone()
               for key in ("exp_avg", "exp_avg_sq")}}


def _saved(state: dict, weights: dict, name: str, key: str) -> torch.Tensor:
    """A saved optimizer tensor: Adam's moments are zero for a parameter saved before its first
    step, and a checkpoint of fp32 weights has no separate master: the weights are the master."""
    if key in state.get(name, {}):
        return state[name][key]
    return weights[name] if key == "master" else torch.zeros_like(weights[name])


def _inner_and_masters(optimizer, params) -> tuple[torch.optim.Optimizer, dict]:
    """(the torch optimizer holding the state, {id(model param): the tensor it updates}): the
    parameter itself, or its fp32 master inside a MixedPrecisionOptimizer."""
    inner = getattr(optimizer, "optimizer", optimizer)
    pairs = dict(zip(map(id, getattr(optimizer, "model_params", [])),
                     getattr(optimizer, "master_params", [])))
    return inner, {id(p): pairs.get(id(p), p) for _, p, _ in params}


def load_serial_model(directory) -> GPT:
    """A serial GPT with a checkpoint's weights (any layout wrote it), in the saved dtype."""
    meta, weights, _ = read_checkpoint(directory)
    model = GPT(GPTConfig(**meta["config"])).to(getattr(torch, meta["dtype"]))
    model.load_state_dict({**weights, "lm_head.weight": weights[EMBEDDING]})
    return model


def checkpoint_to_hf_gpt2_state_dict(directory) -> dict:
    """A checkpoint of any layout as transformers' GPT2LMHeadModel state dict (GPT-2 configs:
    bias=True); the counterpart of GPT.from_hf_gpt2."""
    return load_serial_model(directory).to_hf_gpt2_state_dict()
