"""Floating-point formats made visible: range, precision and subnormals of fp32, fp16, bf16 and fp8,
read from `torch.finfo` and checked by casting, plus what a cast does to real values (rounding,
underflow to zero) and a histogram of gradients against a format's representable range.

fp16 has 5 exponent and 10 mantissa bits (max 65504, smallest subnormal 2^-24); bf16 keeps fp32's
8 exponent bits with 7 mantissa bits (Micikevicius et al. 2018, arXiv 1710.03740; Kalamkar et al.
2019, arXiv 1905.12322); fp8 E4M3/E5M2 are from Micikevicius et al. 2022, arXiv 2209.05433.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FORMATS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
if hasattr(torch, "float8_e4m3fn"):  # torch >= 2.1 has the two OCP fp8 formats as storage dtypes
    FORMATS["fp8_e4m3"] = torch.float8_e4m3fn
    FORMATS["fp8_e5m2"] = torch.float8_e5m2


@dataclass(frozen=True)
class FormatInfo:
    """The numbers that decide what a format can hold."""

    name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int        # stored fraction bits; precision is mantissa_bits + 1 with the hidden 1
    max: float                # largest finite value
    smallest_normal: float    # 2^(1 - bias)
    smallest_subnormal: float  # smallest_normal * eps: below half of it, a cast gives 0
    eps: float                # gap between 1 and the next value: 2^-mantissa_bits


def format_info(name: str) -> FormatInfo:
    """FormatInfo of one of FORMATS (e.g. "fp16"), from torch.finfo."""
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; choose one of {sorted(FORMATS)}")
    fi = torch.finfo(FORMATS[name])
    mantissa = round(-math.log2(fi.eps))
    return FormatInfo(name=name, bits=fi.bits, exponent_bits=fi.bits - 1 - mantissa,
                      mantissa_bits=mantissa, max=float(fi.max),
                      smallest_normal=float(fi.smallest_normal),
                      smallest_subnormal=float(fi.smallest_normal) * float(fi.eps),
                      eps=float(fi.eps))


def format_table() -> list[FormatInfo]:
    """FormatInfo for every format torch has here, widest first."""
    return [format_info(name) for name in FORMATS]


def cast(values, name: str) -> torch.Tensor:
    """Round fp32 values to the format `name` (round to nearest even) and back to fp32, so the
    result shows exactly what the format stores."""
    x = torch.as_tensor(values, dtype=torch.float32)
    return x.to(FORMATS[name]).to(torch.float32)


def relative_rounding_error(values, name: str) -> torch.Tensor:
    """|cast(x) - x| / |x| for each nonzero x: at most eps/2 for normal values in range."""
    x = torch.as_tensor(values, dtype=torch.float32)
    return (cast(x, name) - x).abs() / x.abs()


def underflow_fraction(values, name: str) -> float:
    """Fraction of the nonzero values that become exactly 0 when cast to the format."""
    x = torch.as_tensor(values, dtype=torch.float32).flatten()
    nonzero = x != 0
    if not nonzero.any():
        return 0.0
    return ((cast(x, name) == 0) & nonzero).sum().item() / nonzero.sum().item()


def subnormal_fraction(values, name: str) -> float:
    """Fraction of the nonzero values that land in the format's subnormal range (fewer bits kept)."""
    x = torch.as_tensor(values, dtype=torch.float32).flatten().abs()
    x = x[x != 0]
    if x.numel() == 0:
        return 0.0
    y = cast(x, name)
    info = format_info(name)
    return ((y != 0) & (y < info.smallest_normal)).sum().item() / x.numel()


def model_gradients(model: torch.nn.Module) -> torch.Tensor:
    """All of a model's gradients as one flat fp32 vector (parameters without .grad are skipped)."""
    grads = [p.grad.detach().float().flatten() for p in model.parameters() if p.grad is not None]
    if not grads:
        raise ValueError("the model has no gradients: call loss.backward() first")
    return torch.cat(grads)


def plot_gradient_histogram(grads: torch.Tensor, name: str = "fp16", ax=None, title=None):
    """Histogram of log2|g| with the format's smallest subnormal, smallest normal and max marked:
    everything left of the subnormal line is lost in a cast."""
    import matplotlib.pyplot as plt

    info = format_info(name)
    g = grads.detach().float().flatten().abs()
    log2 = torch.log2(g[g > 0]).numpy()
    ax = ax or plt.subplots(figsize=(8, 3.5))[1]
    ax.hist(log2, bins=120, color="tab:blue", alpha=0.8)
    lost = underflow_fraction(grads, name)
    lines = [(info.smallest_subnormal, "tab:red", f"smallest subnormal 2^{math.log2(info.smallest_subnormal):.0f}"),
             (info.smallest_normal, "tab:orange", f"smallest normal 2^{math.log2(info.smallest_normal):.0f}"),
             (info.max, "tab:green", f"max {info.max:.6g}")]
    for value, color, label in lines:
        ax.axvline(math.log2(value), color=color, linestyle="--", label=label)
    ax.axvspan(min(log2.min(), math.log2(info.smallest_subnormal)) - 1,
               math.log2(info.smallest_subnormal) - 1, color="tab:red", alpha=0.1,
               label=f"flushed to 0 in {name}: {100 * lost:.2f}%")
    ax.set_xlabel("log2 |gradient value|")
    ax.set_ylabel("number of gradient values")
    ax.set_title(title or f"gradients against the {name} range")
    ax.legend(fontsize=8)
    return ax


def smallest_loss_scale(values, name: str = "fp16") -> float:
    """The smallest power of two S such that no nonzero value of `values * S` rounds to zero in the
    format: S > (smallest_subnormal / 2) / min|g| (exactly half a subnormal rounds to even, 0)."""
    x = torch.as_tensor(values, dtype=torch.float32).flatten().abs()
    x = x[x != 0]
    if x.numel() == 0:
        raise ValueError("all values are zero: any scale keeps them; pass nonzero gradients")
    smallest = x.min().item()
    k = math.floor(math.log2(format_info(name).smallest_subnormal / 2 / smallest)) + 1
    return 2.0 ** k
