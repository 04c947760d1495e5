"""A decoder-only GPT (Radford et al. 2019), in reading order: MLP, Block, GPT, then the formulas.

Pre-LayerNorm blocks, GELU MLP, learned positions, input embedding tied to the output layer,
GPT-2's module names (so GPT-2 weights map one to one). The parameter count and the training
FLOPs per token have closed forms, used for MFU and for MT-NLG's 530B.
"""
from __future__ import annotations

import functools
import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import MultiHeadAttention
from .checks import check_token_ids
from .config import GPTConfig
from .hf_gpt2 import check_fits, read_hf_gpt2, to_hf_gpt2_state_dict

IGNORE_INDEX = -100  # targets equal to this are left out of the loss (PyTorch's default)
MAX_BUILDABLE_PARAMS = 2_000_000_000
RECOMPUTE_MODES = ("none", "selective", "full")  # activation recomputation, see GPT.recompute


def full_logits(logits):
    """The logits as they are: a serial model already holds the whole vocabulary."""
    return logits


def cross_entropy_loss(logits, targets):
    """Mean next-token cross entropy; logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def _check_targets(idx, targets, vocab_size):
    """Targets must be ids shaped like idx (the next token of each position) and not empty."""
    check_token_ids(targets, vocab_size, "targets", IGNORE_INDEX, dtypes=(torch.long,))
    if targets.shape != idx.shape:
        raise ValueError(f"targets have shape {tuple(targets.shape)} but idx {tuple(idx.shape)}: "
                         f"targets[b, t] is the token that follows idx[b, t], so the shapes must "
                         f"be equal (a transposed or flattened batch is not)")
    if idx.numel() == 0:
        raise ValueError(f"idx of shape {tuple(idx.shape)} has no tokens: a loss needs at least "
                         f"one position; give each sequence at least one token")


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C (Megatron splits c_fc by columns, c_proj by rows)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu_approximate)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):                                   # (B, T, C)
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """x + Attention(LN(x)), then x + MLP(LN(x)): the pre-LayerNorm transformer block of GPT-2."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = MultiHeadAttention(config.n_embd, config.n_head, bias=config.bias,
                                       dropout=config.dropout, causal=True)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, mask=None, kv_cache=None):         # (B, T, C)
        ### BEGIN SOLUTION
        x = x + self.attn(self.ln_1(x), mask=mask, kv_cache=kv_cache)
        return x + self.mlp(self.ln_2(x))                    # (B, T, C)
        ### END SOLUTION


class GPT(nn.Module):
    """Token + position embeddings, n_layer blocks, a final LayerNorm and the tied output layer.

    recompute (Korthikanti et al. 2022, arXiv 2205.05198): "none" keeps every activation for
    backward; "selective" recomputes each attention core (scores, softmax, weighted sum) in
    backward; "full" keeps only each block's input and reruns the block in backward.
    """

    def __init__(self, config: GPTConfig, recompute: str = "none"):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}; build one, e.g. "
                            f"GPT(GPTConfig(**fields)) or GPTConfig.from_preset(name)")
        C = config.n_embd  # matmul weights and embeddings: a lower bound, exact count only near the limit
        rough = config.n_layer * (4 + 2 * config.mlp_ratio) * C * C + (config.vocab_size + config.block_size) * C
        n = _meta_param_count(config) if rough > 0.9 * MAX_BUILDABLE_PARAMS else rough
        if n > MAX_BUILDABLE_PARAMS:
            raise ValueError(
                f"this config has {n / 1e9:.1f}B parameters ({4 * n / 1e12:.2f} TB in fp32): too "
                f"big to build here. Count it with minimt.model.param_count(config) and "
                f"flops_per_token(config) instead")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying (Press & Wolf 2017)
        self.loss_fn = cross_entropy_loss  # tensor parallelism swaps in the vocab-parallel loss
        self.gather_logits = full_logits   # and a gather of the vocabulary slices, for decoding
        self.apply(lambda module: self._init_weights(module, config.init_std))
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2L)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))
        self.recompute = recompute

    @property
    def recompute(self) -> str:
        """Activation recomputation: "none", "selective" or "full" (settable at any time)."""
        return self._recompute

    @recompute.setter
    def recompute(self, mode: str) -> None:
        if mode not in RECOMPUTE_MODES:
            raise ValueError(f"recompute={mode!r}: choose one of {RECOMPUTE_MODES}")
        self._recompute = mode
        for block in self.transformer.h:
            block.attn.recompute_core = mode == "selective"

    @staticmethod
    def _init_weights(module, std: float = 0.02):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, kv_caches=None, mask=None, position_ids=None):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        kv_caches: one KVCache per block for incremental decoding; mask: bool (B, 1, T, T_kv),
        True = may attend (e.g. to skip left padding); position_ids: (B, T), default past..past+T-1.
        """
        check_token_ids(idx, self.config.vocab_size, "idx")
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, seq) token ids, got shape {tuple(idx.shape)}")
        if targets is not None:
            _check_targets(idx, targets, self.config.vocab_size)
        past = len(kv_caches[0]) if kv_caches else 0
        seq_len = idx.shape[1]
        if past + seq_len > self.config.block_size:
            raise ValueError(
                f"sequence of {past + seq_len} tokens is longer than block_size="
                f"{self.config.block_size}; crop the input to the last {self.config.block_size} "
                f"tokens or build the model with a larger block_size")
        x = self.embed(idx, position_ids, past)                                      # (B, T, C)
        caches = kv_caches if kv_caches is not None else [None] * len(self.transformer.h)
        for block, cache in zip(self.transformer.h, caches):
            x = self.run_block(block, x, mask=mask, kv_cache=cache)                   # (B, T, C)
        logits, loss = self.head(x, targets)                                          # (B, T, V)
        return logits, loss

    def run_block(self, block, x, mask=None, kv_cache=None):
        """block(x) on x (B, T, C); under recompute="full" (while training, no cache) autograd
        keeps only x and reruns the block in backward."""
        if self.recompute == "full" and kv_cache is None and torch.is_grad_enabled():
            return checkpoint(block, x, mask, use_reentrant=False)
        return block(x, mask=mask, kv_cache=kv_cache)

    def embed(self, idx, position_ids=None, past: int = 0):
        """idx (B, T) -> (B, T, C): token + position embeddings, then dropout (the first step)."""
        if position_ids is None:
            position_ids = torch.arange(past, past + idx.shape[1], device=idx.device)[None]  # (1, T)
        x = self.transformer.wte(idx) + self.transformer.wpe(position_ids)            # (B, T, C)
        return self.transformer.drop(x)

    def head(self, x, targets=None):
        """(B, T, C) -> (logits (B, T, V), loss or None): final LayerNorm, tied output layer, loss."""
        logits = self.lm_head(self.transformer.ln_f(x))                               # (B, T, V)
        return logits, None if targets is None else self.loss_fn(logits, targets)

    def generate(self, input_ids, max_new_tokens, **kwargs):
        """Continue input_ids (B, T) by up to max_new_tokens tokens; Hugging Face generate's
        keywords (do_sample, temperature, top_k, top_p, num_beams, ...): see minimt.generate."""
        from .generate import generate  # lazy: the model does not depend on the decoding code
        return generate(self, input_ids, max_new_tokens, **kwargs)

    @classmethod
    def from_hf_gpt2(cls, source, config=None, **overrides):
        """A GPT with a Hugging Face GPT-2's weights: a transformers model, a local directory
        (config.json + weights) or a state dict with `config`; see minimt.hf_gpt2."""
        config, state_dict = read_hf_gpt2(source, config, **overrides)
        model = cls(config)
        check_fits(state_dict, model)
        model.load_state_dict(state_dict, strict=True)
        return model

    def to_hf_gpt2_state_dict(self):
        """This model's weights under transformers' GPT2LMHeadModel names and Conv1D layout."""
        return to_hf_gpt2_state_dict(self)

    def num_params(self, exclude_positions=False):
        """Number of parameters (the tied embedding counted once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if exclude_positions else n


def _meta_param_count(config: GPTConfig) -> int:
    """GPT(config)'s parameters counted on PyTorch's meta device (shapes, no memory): a one-block
    GPT plus n_layer - 1 more blocks. 0 when already building there."""
    if torch.get_default_device().type == "meta":
        return 0
    return _counted_on_meta(config)


@functools.lru_cache(maxsize=64)
def _counted_on_meta(config: GPTConfig) -> int:
    with torch.device("meta"):
        block = sum(p.numel() for p in Block(config).parameters())
        return GPT(replace(config, n_layer=1)).num_params() + (config.n_layer - 1) * block


def param_count(config: GPTConfig) -> int:
    """Closed form of GPT(config).num_params(), without building the model.

    Per block: attention 4C^2 (+4C biases), MLP 2rC^2 (+(r+1)C biases), two LayerNorms 2C (+2C).
    Plus token embedding VC (tied with the output layer), positions TC and a final LayerNorm.
    """
    ### BEGIN SOLUTION
    C, L, V, T, r = config.n_embd, config.n_layer, config.vocab_size, config.block_size, config.mlp_ratio
    b = 1 if config.bias else 0
    per_block = 4 * C * C + 2 * r * C * C + b * (4 * C + (r + 1) * C) + 2 * C * (1 + b)
    return V * C + T * C + L * per_block + C * (1 + b)
    ### END SOLUTION


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token: 6N + 12*L*C*T (forward + backward; PaLM, Chowdhery et al. 2022,
    arXiv 2204.02311, appendix B). N counts the weights used in matmuls (all but positions)."""
    T = config.block_size if seq_len is None else seq_len
    n_matmul = _meta_param_count(config) - config.block_size * config.n_embd
    return 6 * n_matmul + 12 * config.n_layer * config.n_embd * T
