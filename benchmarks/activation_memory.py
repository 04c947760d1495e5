"""Activation bytes one transformer layer saves for backward, measured on real tensor-parallel ranks,
beside minimt's formula and Korthikanti et al. 2022 (arXiv 2205.05198, Table 2).

For tp in (2, 4), fp32 and bf16, and each mode (tp, tp+sp, tp+sp+selective, tp+full, tp+sp+full):
one block of a small GPT on `tp` gloo processes (minimt.parallel.launch), the storages autograd
saves during its forward (SavedTensorBytes, each storage once), in units of s*b*h bytes. The
Korthikanti column is Table 2 at the row's element size (x 4/2 for fp32), with dropout: it counts
1-byte dropout masks (2/t sbh with SP) that minimt, at dropout 0, does not save; minimt's fused
attention saves a log-sum-exp per query (fp32) instead of the 5as/(ht) softmax terms, and the
LayerNorms' mean and 1/std (see minimt.memory.layer_activation_terms, term by term).
    .venv/bin/python benchmarks/activation_memory.py
Prints a table with ratios (measured / Korthikanti, measured / plain tp of the same run) and ends
with one JSON line.
"""
from __future__ import annotations

import json

import torch

from minimt.config import GPTConfig
from minimt.memory import layer_activation_bytes, measure_layer
from minimt.model import GPT
from minimt.parallel import launch
from minimt.parallel.tensor import apply_tensor_parallel
from minimt.scale import megatron_layer_activation_bytes

S, B, H, A = 64, 2, 128, 8  # sequence, micro-batch, hidden, heads (divisible by tp = 2 and 4)
MODES = {"tp": (False, "none"), "tp+sp": (True, "none"), "tp+sp+selective": (True, "selective"),
         "tp+full": (False, "full"), "tp+sp+full": (True, "full")}  # mode -> (SP, recompute)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def measure_modes(ctx) -> dict:
    """Bytes block 0 saves on this rank, for every (mode, dtype)."""
    config = GPTConfig(vocab_size=64, block_size=S, n_layer=1, n_head=A, n_embd=H)
    out = {}
    for mode, (sequence_parallel, recompute) in MODES.items():
        for name, dtype in DTYPES.items():
            torch.manual_seed(0)
            model = apply_tensor_parallel(GPT(config, recompute=recompute), ctx,
                                          sequence_parallel=sequence_parallel).to(dtype)
            tokens = S // ctx.tp_size if sequence_parallel else S
            x = torch.randn(B, tokens, H, dtype=dtype)                  # (B, T or T/tp, C)
            out[mode, name] = measure_layer(model, x).bytes
    return out


def main() -> None:
    rows = []
    sbh = S * B * H
    print(f"one layer, s={S} b={B} h={H} a={A}; saved bytes / (s b h)")
    print(f"{'mode':<17}{'tp':>3}{'dtype':>6}{'measured':>10}{'formula':>9}{'Korthikanti':>12}"
          f"{'x Korth.':>9}{'x tp':>7}")
    for tp in (2, 4):
        measured = launch(measure_modes, tp=tp, timeout_s=120)[0]
        for mode, (sequence_parallel, recompute) in MODES.items():
            for name in DTYPES:
                e = 4 if name == "fp32" else 2
                formula = layer_activation_bytes(S, B, H, A, tp, sequence_parallel, recompute,
                                                 dtype_bytes=e)
                korthikanti = megatron_layer_activation_bytes(S, B, H, A, tp, sequence_parallel,
                                                              recompute) * e / 2
                got = measured[mode, name]
                rows.append({"mode": mode, "tp": tp, "dtype": name, "measured_sbh": got / sbh,
                             "formula_sbh": formula / sbh, "korthikanti_sbh": korthikanti / sbh})
                print(f"{mode:<17}{tp:>3}{name:>6}{got / sbh:>10.3f}{formula / sbh:>9.3f}"
                      f"{korthikanti / sbh:>12.3f}{got / korthikanti:>9.3f}"
                      f"{got / measured['tp', name]:>7.3f}")
    print(json.dumps({"benchmark": "activation_memory", "rows": rows}))


if __name__ == "__main__":
    main()
