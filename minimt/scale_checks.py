"""The calculators' argument checks (minimt.scale, minimt.memory): a size, a ZeRO stage, a GPU's
memory or a throughput given in the wrong type or unit is refused with a sentence naming it,
instead of a ZeroDivisionError later or a plausible-looking wrong number."""
from __future__ import annotations

import numbers

ZERO_STAGES = (0, 1, 2, 3)
MAX_TFLOPS_PER_GPU = 5000  # above any GPU's dense 16-bit peak (B200: 2250 TFLOP/s)


def check_positive_ints(**values) -> None:
    """Each value an integer (numpy's too, not a bool) >= 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


def check_achieved_tflops(value) -> None:
    """None, or a plausible per-GPU TFLOP/s (MT-NLG achieved 113-126 on A100s)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"achieved_tflops={value!r} must be a positive number of TFLOP/s per "
                         f"GPU (MT-NLG reached 113-126 on A100s), or None to skip the time")
    if value > MAX_TFLOPS_PER_GPU:
        raise ValueError(f"achieved_tflops={value:g} is more than any GPU computes "
                         f"(<= {MAX_TFLOPS_PER_GPU} TFLOP/s): give TFLOP/s per GPU, not FLOP/s "
                         f"nor the whole cluster's (e.g. 1.2e14 FLOP/s is 120)")


def check_gpu_bytes(gpu_bytes) -> None:
    """A GPU's memory in bytes: refuse other types, and GB or GiB given as a small number."""
    if isinstance(gpu_bytes, bool) or not isinstance(gpu_bytes, (int, float)) or gpu_bytes <= 0:
        raise ValueError(f"gpu_bytes={gpu_bytes!r} must be a positive number of bytes per GPU "
                         f"(e.g. 80 * 2**30)")
    if gpu_bytes < 2 ** 20:
        raise ValueError(f"gpu_bytes={gpu_bytes:g} is less than a MiB: it takes bytes, not GB or "
                         f"GiB; for an 80 GB GPU give 80 * 2**30")


def check_zero(zero) -> int:
    """A ZeRO stage 0-3; True (the old ZeRO-1 switch) is stage 1, False stage 0."""
    if isinstance(zero, bool):
        return int(zero)
    if not isinstance(zero, numbers.Integral) or zero not in ZERO_STAGES:
        raise ValueError(f"zero={zero!r}: choose a ZeRO stage in {ZERO_STAGES} (an int)")
    return int(zero)
