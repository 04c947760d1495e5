"""Checkers for 02_gpt: a LLaMA-style parameter count, the step a schedule reaches a rate, the
language-model loss, and the tasks Block.forward, param_count and lr_at. Oracles: torch's
nn.TransformerEncoderLayer (pre-LayerNorm), models built on the meta device, torch's LinearLR and
CosineAnnealingLR schedulers."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from .core import ExerciseError, call, compare, learner, matches, run_cases, shape_first, task


def built_param_count(config) -> int:
    """Oracle: the parameters of GPT(config) built on the meta device (shapes only, no memory).
    Deep models are built with 1 and 2 blocks (the blocks are identical) and extrapolated."""
    from dataclasses import replace

    from ..model import GPT
    with torch.device("meta"):
        if config.n_layer <= 2:
            return GPT(config).num_params()
        one, two = (GPT(replace(config, n_layer=n)).num_params() for n in (1, 2))
    return one + (config.n_layer - 1) * (two - one)


def _param_configs():
    from ..config import PRESETS, GPTConfig
    return [GPTConfig(), GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=64),
            GPTConfig(n_layer=3, n_embd=96, n_head=3, bias=True), GPTConfig(mlp_ratio=2),
            PRESETS["gpt2-124m"], PRESETS["mt-nlg-530b"]]


def _param_hint(config, got, expected) -> str:
    C, V = config.n_embd, config.vocab_size
    diff = expected - got if isinstance(got, int) else None
    return ("count the tied token embedding / output layer V*C once, not twice"
            if diff == -V * C else
            "did you forget the position embedding (block_size * C)?"
            if diff == config.block_size * C else
            "with bias=True every Linear and LayerNorm has a bias vector too"
            if config.bias else "per block: 4C^2 (attention) + 2*mlp_ratio*C^2 (MLP) + 2C "
            "(two LayerNorm gains); plus the final LayerNorm's C")


def llama_built_param_count(vocab_size, n_layer, n_embd, ffn_hidden) -> int:
    """Oracle: the parameters of a LLaMA-style decoder built from torch modules on the meta
    device: untied embedding and output layer, no position table, no biases, RMSNorm gains,
    attention W_q W_k W_v W_o and a SwiGLU MLP (gate, up, down). One block, times n_layer."""
    with torch.device("meta"):
        block = nn.ModuleList([nn.RMSNorm(n_embd), nn.RMSNorm(n_embd)]
                              + [nn.Linear(n_embd, n_embd, bias=False) for _ in range(4)]
                              + [nn.Linear(n_embd, ffn_hidden, bias=False) for _ in range(2)]
                              + [nn.Linear(ffn_hidden, n_embd, bias=False)])
        ends = nn.ModuleList([nn.Embedding(vocab_size, n_embd), nn.RMSNorm(n_embd),
                              nn.Linear(n_embd, vocab_size, bias=False)])
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    return n_layer * count(block) + count(ends)


def _llama_hint(args, got) -> str:
    vocab, layers, C, F = args
    diff = llama_built_param_count(*args) - got if isinstance(got, int) else None
    return ("the output layer is NOT tied to the embedding here: count V*C twice"
            if diff == vocab * C else
            "SwiGLU has three matrices (gate, up: C x F; down: F x C), not two"
            if diff == layers * C * F else
            "RMSNorm has a gain only (C numbers, no bias): two per block and a final one"
            if diff == -(2 * layers + 1) * C else
            "per block: 4C^2 (attention) + 3*C*F (SwiGLU) + 2C (two RMSNorm gains); plus the "
            "final RMSNorm's C and 2VC (embedding and output layer)")


def _lr_oracle(it, learning_rate, warmup_iters, lr_decay_iters, min_lr) -> float:
    """torch's LinearLR over the warm-up (step i: (i+1)/(warmup+1) of the peak), then torch's
    CosineAnnealingLR from the peak down to min_lr at lr_decay_iters, then min_lr."""
    if it > lr_decay_iters:
        return min_lr
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=learning_rate)
    if it < warmup_iters:
        sched = torch.optim.lr_scheduler.LinearLR(optimizer, 1 / (warmup_iters + 1),
                                                  warmup_iters / (warmup_iters + 1), warmup_iters - 1 or 1)
        steps = it
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, max(1, lr_decay_iters - warmup_iters), eta_min=min_lr)
        steps = it - warmup_iters
    for _ in range(steps):
        optimizer.step()
        sched.step()
    return optimizer.param_groups[0]["lr"]


LLAMA_CASES = [(100, 2, 64, 172), (1000, 3, 96, 256), (32000, 32, 4096, 11008),
               (32000, 80, 8192, 28672)]   # LLaMA-7B and LLaMA-2-70B's widths (no GQA)


def check_llama_param_count(fn: Callable) -> None:
    """fn(vocab_size, n_layer, n_embd, ffn_hidden) -> int: a LLaMA-style decoder's parameters in
    closed form; oracle: the same modules built on the meta device and counted."""
    for i, args in enumerate(LLAMA_CASES):
        got = call("check_llama_param_count", fn, *args)
        expected = llama_built_param_count(*args)
        if got != expected:
            raise ExerciseError(f"check_llama_param_count, case {i + 1} of {len(LLAMA_CASES)} "
                                f"(vocab_size, n_layer, n_embd, ffn_hidden = {args}): got "
                                f"{got!r}, expected {expected:,}. Hint: {_llama_hint(args, got)}")
    print(f"check_llama_param_count: all {len(LLAMA_CASES)} cases pass")


def _first_step_at_most(target, learning_rate, warmup_iters, lr_decay_iters, min_lr) -> int:
    """Oracle: torch's CosineAnnealingLR (the schedule after the warm-up, as in _lr_oracle),
    stepped from the peak at warmup_iters until the rate is <= target."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, max(1, lr_decay_iters - warmup_iters), eta_min=min_lr)
    it = warmup_iters
    while optimizer.param_groups[0]["lr"] > target:
        optimizer.step()
        sched.step()
        it += 1
    return it


def check_first_step_below(fn: Callable) -> None:
    """fn(target, learning_rate, warmup_iters, lr_decay_iters, min_lr) -> int: the first step
    after the warm-up whose learning rate is <= target (min_lr < target <= learning_rate)."""
    cases = [(5e-4, 1e-3, 20, 200, 1e-4), (9e-4, 1e-3, 20, 200, 1e-4), (1.1e-4, 1e-3, 20, 200, 1e-4),
             (2.9e-4, 6e-4, 10, 50, 0.0), (0.7, 1.0, 0, 10, 0.5), (9.99e-4, 1e-3, 100, 600, 1e-4)]
    for i, args in enumerate(cases):
        got = call("check_first_step_below", fn, *args)
        expected = _first_step_at_most(*args)
        if got != expected:
            warm = ("; count from step 0: the cosine starts at warmup_iters" if got ==
                    expected - args[2] else "; the first step AT or below: round up (math.ceil)"
                    if got == expected - 1 else "; the step is an integer: round up" if
                    isinstance(got, float) else "")
            raise ExerciseError(f"check_first_step_below, case {i + 1} of {len(cases)} (target, "
                                f"learning_rate, warmup_iters, lr_decay_iters, min_lr = {args}): "
                                f"got {got!r}, expected {expected}{warm}")
    print(f"check_first_step_below: all {len(cases)} cases pass")


def _lr_cases():
    settings = [(1e-3, 20, 200, 1e-4), (6e-4, 10, 50, 0.0), (1.0, 0, 10, 0.5)]
    return [(it, *s) for s in settings for it in (0, 1, s[1] - 1, s[1], (s[1] + s[2]) // 2,
                                                  s[2] - 1, s[2], s[2] + 5) if it >= 0]


def _lm_loss(logits, idx):
    """Reference: position t predicts token t+1, so drop the last logit and the first token."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())


def check_lm_loss(fn: Callable) -> None:
    """fn(logits (B, T, V), idx (B, T)) -> scalar mean cross entropy of predicting idx[:, t+1]
    from logits[:, t] (the causal language-modelling loss)."""
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(2, 5, 7, generator=g), torch.randint(7, (2, 5), generator=g)),
             (torch.randn(1, 2, 3, generator=g), torch.randint(3, (1, 2), generator=g)),
             (torch.randn(3, 8, 11, generator=g), torch.randint(11, (3, 8), generator=g))]
    for i, (logits, idx) in enumerate(cases):
        got = call("check_lm_loss", fn, logits, idx)
        expected = _lm_loss(logits, idx)
        try:
            compare(f"check_lm_loss, case {i + 1} of {len(cases)}", got, expected)
        except ExerciseError as err:
            unshifted = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())
            wrong_way = torch.nn.functional.cross_entropy(logits[:, 1:].flatten(0, 1),
                                                          idx[:, :-1].flatten())
            hint = ("this is the loss without the shift: logits[:, t] must predict idx[:, t+1]"
                    if matches(got, unshifted) else
                    "shifted the wrong way: use logits[:, :-1] against idx[:, 1:]"
                    if matches(got, wrong_way) else None)
            raise ExerciseError(f"{err}. Hint: {hint}" if hint else str(err)) from None
    print(f"check_lm_loss: all {len(cases)} cases pass")


# ---------------------------------------------------------------------------- tasks in the package

def _reference_layer(block, config) -> nn.TransformerEncoderLayer:
    """Oracle: torch's own pre-LayerNorm transformer layer holding the block's weights."""
    layer = nn.TransformerEncoderLayer(
        config.n_embd, config.n_head, config.mlp_ratio * config.n_embd, dropout=0.0,
        activation=nn.GELU(approximate=config.gelu_approximate), layer_norm_eps=config.layer_norm_eps,
        batch_first=True, norm_first=True, bias=config.bias, dtype=torch.float64)
    pairs = [(layer.self_attn.in_proj_weight, block.attn.c_attn.weight),
             (layer.self_attn.out_proj.weight, block.attn.c_proj.weight),
             (layer.linear1.weight, block.mlp.c_fc.weight), (layer.linear2.weight, block.mlp.c_proj.weight),
             (layer.norm1.weight, block.ln_1.weight), (layer.norm2.weight, block.ln_2.weight)]
    if config.bias:
        pairs += [(layer.self_attn.in_proj_bias, block.attn.c_attn.bias),
                  (layer.self_attn.out_proj.bias, block.attn.c_proj.bias),
                  (layer.linear1.bias, block.mlp.c_fc.bias), (layer.linear2.bias, block.mlp.c_proj.bias),
                  (layer.norm1.bias, block.ln_1.bias), (layer.norm2.bias, block.ln_2.bias)]
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.copy_(theirs)
    return layer.eval()


class _SpyCache:
    """A stand-in KV cache that records whether the block handed it to its attention."""

    def __init__(self):
        self.calls = 0

    def __len__(self):
        return 0

    def append(self, k, v):
        self.calls += 1
        return k, v


def _block_hint(block, x, got) -> str | None:
    """Name the classic mistakes in a pre-LayerNorm block by recomputing them."""
    attn = lambda z: block.attn(z)  # noqa: E731  (the package's attention, causal)
    post = block.ln_1(x + attn(x))
    variants = [
        (block.ln_2(post + block.mlp(post)), "this is the post-LayerNorm block of the original "
         "Transformer: GPT-2 normalises the input of each branch, x + attn(ln_1(x)), and adds "
         "the branch to the un-normalised x"),
        (block.mlp(block.ln_2(attn(block.ln_1(x)))), "the residual connections are missing: "
         "each sub-layer's output is ADDED to its input"),
        (x + attn(block.ln_1(x)) + block.mlp(block.ln_2(x)), "the MLP must see the output of the "
         "attention step (sequential, not parallel branches)"),
    ]
    for wrong, advice in variants:
        if matches(got, wrong.detach()):
            return advice
    return None


def _check_block_task() -> None:
    """minimt.model.Block.forward against torch's nn.TransformerEncoderLayer(norm_first=True)
    holding the same weights, causal, in float64; the KV cache must reach the attention."""
    from ..config import GPTConfig
    block_class = learner("minimt.model:Block")
    configs = [GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8),
               GPTConfig(n_layer=1, n_head=4, n_embd=32, block_size=8, bias=True, mlp_ratio=2)]
    g = torch.Generator().manual_seed(0)
    for i, config in enumerate(configs):
        torch.manual_seed(i)
        block = block_class(config).double().eval()
        for p in block.parameters():  # LayerNorm gains and biases away from 1 and 0
            nn.init.normal_(p, 0.0, 0.3, generator=g)
        x = torch.randn(2, 7, config.n_embd, dtype=torch.float64, generator=g)   # (B, T, C)
        name = f"task 02.1, case {i + 1} of {len(configs)} (x {tuple(x.shape)}, bias={config.bias})"
        with torch.no_grad():
            got = block(x)
            shape_first(name, got, tuple(x.shape), "a block maps (B, T, C) to (B, T, C)")
            causal = torch.ones(7, 7, dtype=torch.bool).triu(1)     # True = masked, torch's rule
            expected = _reference_layer(block, config)(x, src_mask=causal, is_causal=True)
            try:
                compare(name, got, expected, atol=1e-9, rtol=1e-7)
            except ExerciseError as err:
                advice = _block_hint(block, x, got)
                raise ExerciseError(f"{err}. Hint: {advice}" if advice else str(err)) from None
            spy, seen, attend = _SpyCache(), {}, block.attn.forward
            mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)                # (B, 1, T, T) padding

            def spy_attention(z, mask=None, kv_cache=None, **kwargs):
                seen["mask"] = mask
                return attend(z, mask=mask, kv_cache=kv_cache, **kwargs)
            block.attn.forward = spy_attention
            block(x, mask=mask, kv_cache=spy)
            if spy.calls != 1:
                raise ExerciseError(f"{name}: the kv_cache argument never reached the attention; "
                                    f"pass kv_cache= (and mask=) on to self.attn")
            if seen.get("mask") is not mask:
                raise ExerciseError(f"{name}: the mask argument never reached the attention; "
                                    f"pass mask= (and kv_cache=) on to self.attn")
    print(f"task 02.1: Block.forward equals torch's pre-LayerNorm TransformerEncoderLayer on "
          f"{len(configs)} configs")


def _check_param_count_task() -> None:
    """minimt.model.param_count against the parameters of the model built on the meta device."""
    param_count = learner("minimt.model:param_count")
    configs = _param_configs()
    for i, config in enumerate(configs):
        got = param_count(config)
        expected = built_param_count(config)
        if got != expected:
            raise ExerciseError(
                f"task 02.2, case {i + 1} of {len(configs)} (n_layer={config.n_layer}, "
                f"n_embd={config.n_embd}, vocab_size={config.vocab_size}, block_size="
                f"{config.block_size}, mlp_ratio={config.mlp_ratio}, bias={config.bias}): got "
                f"{got!r}, expected {expected:,} (counted on a built model); "
                f"{_param_hint(config, got, expected)}")
    print(f"task 02.2: param_count equals the built model's count on {len(configs)} configs, "
          f"MT-NLG's {expected / 1e9:.1f}B included")


def _check_lr_task() -> None:
    """minimt.train.lr_at against torch's LinearLR (warm-up) and CosineAnnealingLR (decay)."""
    lr_at = learner("minimt.lr_schedule:lr_at")
    cases = _lr_cases()
    for i, (it, peak, warmup, decay, low) in enumerate(cases):
        got = lr_at(it, peak, warmup, decay, low)
        expected = _lr_oracle(it, peak, warmup, decay, low)
        if isinstance(got, (int, float)) and math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-12):
            continue
        hint = ("the warm-up is linear from (0+1)/(warmup+1) of the peak at step 0 to the peak: "
                "lr * (it + 1) / (warmup_iters + 1)" if it < warmup else
                "after lr_decay_iters the rate stays at min_lr" if it > decay else
                "the cosine goes from learning_rate at warmup_iters down to min_lr (not 0) at "
                "lr_decay_iters: min_lr + (lr - min_lr) * (1 + cos(pi * ratio)) / 2")
        raise ExerciseError(f"task 02.3, case {i + 1} of {len(cases)} (it={it}, learning_rate="
                            f"{peak}, warmup_iters={warmup}, lr_decay_iters={decay}, min_lr={low}): "
                            f"got {got!r}, expected {expected!r}. Hint: {hint}")
    print(f"task 02.3: lr_at equals torch's LinearLR + CosineAnnealingLR on {len(cases)} steps")


TASKS = [
    task("02.1", 3, "write Block.forward (pre-LayerNorm attention and MLP, each with a residual)",
         "minimt.model:Block.forward", "notebook 02, section 2", _check_block_task),
    task("02.2", 2, "write param_count (the closed form of GPT(config).num_params())",
         "minimt.model:param_count", "notebook 02, section 3", _check_param_count_task),
    task("02.3", 2, "write lr_at (linear warm-up, then cosine decay to min_lr)",
         "minimt.lr_schedule:lr_at", "notebook 02, section 4", _check_lr_task),
]
