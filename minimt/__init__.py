"""minimt: mini Megatron-Turing, a course package that builds Megatron-style training by hand."""
from .config import PRESETS, GPTConfig
from .model import GPT, flops_per_token, param_count

__all__ = ["GPTConfig", "PRESETS", "GPT", "param_count", "flops_per_token"]
