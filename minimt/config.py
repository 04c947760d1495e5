"""GPTConfig: the shape of a decoder-only GPT, validated on construction, plus named presets.

Every check says what to change, so a typo in a notebook fails here with a sentence rather than
deep inside a matmul with a shape error.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from .checks import check_number

GELU_APPROXIMATIONS = ("none", "tanh")


@dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of a GPT. Defaults are nanoGPT's shakespeare_char CPU recipe."""

    vocab_size: int = 65          # number of token ids
    block_size: int = 64          # context length (max sequence length)
    n_layer: int = 4              # transformer blocks
    n_head: int = 4               # attention heads per block
    n_embd: int = 128             # hidden size (d_model)
    dropout: float = 0.0          # dropout probability in attention, MLP and embeddings
    bias: bool = False            # biases in Linear and LayerNorm layers (GPT-2: True)
    gelu_approximate: str = "none"  # "tanh" reproduces GPT-2's GELU exactly
    layer_norm_eps: float = 1e-5
    mlp_ratio: int = 4            # MLP hidden size = mlp_ratio * n_embd
    init_std: float = 0.02        # std of the normal initial weights (GPT-2: 0.02)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for name in ("dropout", "layer_norm_eps"):
            check_number(name, getattr(self, name))
        if self.n_embd % self.n_head != 0:
            lower = self.n_embd // self.n_head * self.n_head
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: every head gets "
                f"n_embd/n_head channels; use e.g. n_embd={lower or self.n_head} or an n_head "
                f"that divides {self.n_embd}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")
        if self.gelu_approximate not in GELU_APPROXIMATIONS:
            raise ValueError(f"gelu_approximate={self.gelu_approximate!r}: choose one of "
                             f"{GELU_APPROXIMATIONS}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps!r} must be positive")

    @property
    def head_dim(self) -> int:
        """Channels per attention head (d_k in Vaswani et al.)."""
        return self.n_embd // self.n_head

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named preset (see PRESETS), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        unknown = set(overrides) - set(asdict(PRESETS[name]))
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {sorted(unknown)}; "
                             f"fields are {sorted(asdict(PRESETS[name]))}")
        return replace(PRESETS[name], **overrides)

    def replace(self, **changes) -> "GPTConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


PRESETS = {
    # nanoGPT's config/train_shakespeare_char.py with its CPU overrides (nanoGPT README).
    "nanogpt-shakespeare-cpu": GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4,
                                         n_embd=128, dropout=0.0, bias=False),
    # GPT-2 small (Radford et al. 2019): biases, tanh GELU, 50257 BPE tokens, 1024 context.
    "gpt2-124m": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                           dropout=0.0, bias=True, gelu_approximate="tanh"),
    # MT-NLG 530B (Smith et al. 2022, arXiv 2201.11990): 105 layers, hidden 20480, 128 heads,
    # sequence 2048. The vocabulary is GPT-2's BPE (50257), as in Megatron-LM's GPT recipes.
    # For counting parameters and FLOPs only: building it would need ~2 TB in fp32.
    # init_std sqrt(1 / (3 h)) = 0.00403: MT-NLG's 4.0e-3 (Smith et al. 2022, arXiv 2201.11990,
    # section 4, per secondary notes; Microsoft's Megatron-DeepSpeed scripts credit the rule to
    # MT-NLG); its Adam settings are minimt.recipe.MT_NLG_OPTIMIZER
    "mt-nlg-530b": GPTConfig(vocab_size=50257, block_size=2048, n_layer=105, n_head=128,
                             n_embd=20480, dropout=0.0, bias=True, gelu_approximate="tanh",
                             init_std=math.sqrt(1 / (3 * 20480))),
}
