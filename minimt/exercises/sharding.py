"""Task of 07_data_parallel_3d's ZeRO-3 section, checked on real gloo ranks against an independent
oracle: 07.4 ZeRO-3's free-after-forward and gather-before-backward around a layer
(FullyShardedDataParallel._after_forward), against torch.optim.AdamW on the serial GPT and the
whole batch, the weights a rank holds after the forward, and the bytes gathered per pass."""
from __future__ import annotations

import torch

from .core import ExerciseError, compare, task

CONFIG_KW = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=True)
BATCH, STEPS, LR = 4, 2, 1e-3


def _batches():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, CONFIG_KW["vocab_size"], (BATCH, CONFIG_KW["block_size"]),
                          generator=g) for _ in range(STEPS)]


def _zero3_rank(ctx):
    """STEPS ZeRO-3 steps on this rank's rows; what the rank held after each forward, what it
    gathered per pass, the final weights, or the error the forward or the backward raised."""
    from ..config import GPTConfig
    from ..model import GPT
    from ..parallel import CommCounter
    from ..parallel.fsdp import FullyShardedDataParallel
    from ..parallel.sharded_adamw import ShardedAdamW
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CONFIG_KW))
    fsdp = FullyShardedDataParallel(model, ctx, stage=3, prefetch=1)
    opt = ShardedAdamW(fsdp, lr=LR)
    rows = BATCH // ctx.dp_size
    held, gathered = [], []
    for x in _batches():
        x = x[ctx.dp_rank * rows:(ctx.dp_rank + 1) * rows]         # (B/dp, T)
        with CommCounter() as counter:
            try:
                _, loss = model(x, x)
            except RuntimeError as err:
                return {"error": f"the forward failed: {err}", "pass": "forward"}
            held.append({i: sum(p.numel() for p in block.parameters())
                         for i, block in enumerate(model.transformer.h)})
            try:
                loss.backward()
            except RuntimeError as err:
                return {"error": f"the backward failed: {err}", "pass": "backward"}
        gathered.append({phase: counter.numel("all_gather", "dp", phase)
                         for phase in ("forward", "backward")})
        opt.step()
        opt.zero_grad()
    return {"held": held, "gathered": gathered, "weights": fsdp.full_state_dict(),
            "numel": sum(unit.padded for unit in fsdp.units)}


def _check_zero3_layer() -> None:
    """On 2 ranks, 2 AdamW steps of a 2-block GPT under ZeRO-3: the weights equal
    torch.optim.AdamW's on the serial model and the whole batch (1e-5), no block holds its full
    weights after its forward, and each pass gathers every parameter once."""
    from ..config import GPTConfig
    from ..model import GPT
    from ..parallel import launch
    torch.manual_seed(0)
    serial = GPT(GPTConfig(**CONFIG_KW))                               # the oracle
    opt = torch.optim.AdamW(serial.parameters(), lr=LR)
    for x in _batches():
        serial(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    for rank, out in enumerate(launch(_zero3_rank, dp=2, timeout_s=60)):
        name = f"task 07.4, rank {rank} of 2, a {CONFIG_KW['n_layer']}-block GPT under ZeRO-3"
        if "error" in out:
            hint = ("free only unit `index`: the others are gathered for their own forward"
                    if out["pass"] == "forward" else "re-gather before backward: the weights "
                    "were freed after forward; pass the outputs through _GatherBeforeBackward")
            raise ExerciseError(f"{name}: {out['error'][:300]}. Hint: {hint}")
        for step, held in enumerate(out["held"]):
            kept = {i: n for i, n in held.items() if n}
            if kept:
                raise ExerciseError(f"{name}, step {step + 1}: after the forward, blocks "
                                    f"{sorted(kept)} still hold their full weights ({kept} "
                                    f"elements), expected 0. Hint: free the unit after its "
                                    f"forward with self._free(self.units[index])")
        for step, phases in enumerate(out["gathered"]):
            expected = {"forward": out["numel"], "backward": out["numel"]}
            if phases != expected:
                raise ExerciseError(f"{name}, step {step + 1}: all-gathered {phases} elements, "
                                    f"expected {expected}: every unit once in forward and once "
                                    f"more in backward. Hint: re-gather before backward: pass the "
                                    f"outputs through _GatherBeforeBackward")
        for n, p in serial.named_parameters():
            compare(f"{name}: {n} after {STEPS} steps", out["weights"][n], p.detach(), atol=1e-5,
                    rtol=0)
    print("task 07.4: ZeRO-3 equals torch.optim.AdamW on the serial model after 2 steps; each "
          "block is freed after its forward and gathered once per pass")


TASKS = [
    task("07.4", 2, "write FullyShardedDataParallel._after_forward: free the unit's weights, and "
         "make its backward gather them again", "minimt.parallel.fsdp:"
         "FullyShardedDataParallel._after_forward", "notebook 07, section 3",
         _check_zero3_layer),
]
