"""Convert between Hugging Face GPT-2 checkpoints and minimt's GPT, both ways, without downloading.

minimt keeps GPT-2's module names (wte, wpe, h.N.ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
mlp.c_proj, ln_f), so the only change is the layout of the four projection matrices: GPT-2's
Conv1D stores a weight as (in, out), nn.Linear as (out, in). transformers is not imported here.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import GPTConfig

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                  "mlp.c_proj.weight")
GELU_OF_ACTIVATION = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}


def config_from_hf_gpt2(hf_config, **overrides) -> GPTConfig:
    """GPTConfig from a transformers GPT2Config or its config.json dict. Dropout is a training
    setting and defaults to 0 here; pass dropout=... (or any field) to override."""
    get = hf_config.get if isinstance(hf_config, dict) else lambda k, d=None: getattr(hf_config, k, d)
    activation = get("activation_function", "gelu_new")
    if activation not in GELU_OF_ACTIVATION:
        raise ValueError(f"activation_function={activation!r} has no minimt equivalent; "
                         f"supported: {sorted(GELU_OF_ACTIVATION)}")
    unsupported = {"scale_attn_weights": (get("scale_attn_weights", True), True),
                   "scale_attn_by_inverse_layer_idx": (get("scale_attn_by_inverse_layer_idx", False), False),
                   "tie_word_embeddings": (get("tie_word_embeddings", True), True)}
    for name, (value, needed) in unsupported.items():
        if bool(value) != needed:
            raise ValueError(f"{name}={value!r} is not supported: minimt's GPT has {name}={needed}")
    n_embd = get("n_embd")
    n_inner = get("n_inner") or 4 * n_embd
    if n_inner % n_embd:
        raise ValueError(f"n_inner={n_inner} is not a multiple of n_embd={n_embd}; minimt's MLP "
                         "width is mlp_ratio * n_embd")
    fields = dict(vocab_size=get("vocab_size"), block_size=get("n_positions"),
                  n_layer=get("n_layer"), n_head=get("n_head"), n_embd=n_embd, dropout=0.0,
                  bias=True, gelu_approximate=GELU_OF_ACTIVATION[activation],
                  layer_norm_eps=get("layer_norm_epsilon", 1e-5), mlp_ratio=n_inner // n_embd)
    fields.update(overrides)
    return GPTConfig(**fields)


def hf_gpt2_config_dict(config: GPTConfig) -> dict:
    """The GPT2Config fields for a minimt config: `transformers.GPT2Config(**d)` builds the twin."""
    if not config.bias:
        raise ValueError("GPT-2 has biases in every Linear and LayerNorm; this config has bias=False")
    activation = "gelu_new" if config.gelu_approximate == "tanh" else "gelu"
    return dict(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                n_layer=config.n_layer, n_head=config.n_head,
                n_inner=config.mlp_ratio * config.n_embd, activation_function=activation,
                resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
                layer_norm_epsilon=config.layer_norm_eps, tie_word_embeddings=True)


def _load_dir(path: Path):
    """config.json and model.safetensors (or pytorch_model.bin) from a save_pretrained folder."""
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: give a folder written by save_pretrained")
    hf_config = json.loads((path / "config.json").read_text())
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file
        return hf_config, load_file(path / "model.safetensors")
    if (path / "pytorch_model.bin").is_file():
        return hf_config, torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ValueError(f"{path} has neither model.safetensors nor pytorch_model.bin")


def from_hf_state_dict(state_dict) -> dict:
    """transformers' GPT-2 names and layout -> minimt's GPT state dict (tied lm_head included)."""
    out = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the tied output layer and old causal-mask buffers
        key = name if name.startswith("transformer.") else f"transformer.{name}"
        out[key] = tensor.t() if key.endswith(CONV1D_WEIGHTS) else tensor
    if "transformer.wte.weight" not in out:
        raise ValueError("not a GPT-2 state dict: no 'transformer.wte.weight' (or 'wte.weight')")
    if "lm_head.weight" in state_dict and not torch.equal(state_dict["lm_head.weight"],
                                                          out["transformer.wte.weight"]):
        raise ValueError("lm_head.weight differs from wte.weight: minimt ties the output layer "
                         "to the token embedding, so an untied checkpoint cannot be loaded")
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def read_hf_gpt2(source, config=None, **overrides) -> tuple[GPTConfig, dict]:
    """(GPTConfig, state dict under minimt's names) of a Hugging Face GPT-2; GPT.from_hf_gpt2
    builds the model from them (this module never imports the model: the arrow goes one way).

    source: a transformers GPT2LMHeadModel/GPT2Model (uses its .config), a local directory from
    save_pretrained, or a state dict (then `config`, a GPTConfig or GPT2Config, is required).
    """
    if isinstance(source, (str, Path)):
        hf_config, state_dict = _load_dir(Path(source))
    elif hasattr(source, "state_dict") and hasattr(source, "config"):
        hf_config, state_dict = source.config, source.state_dict()
    elif isinstance(source, dict):
        if config is None:
            raise ValueError("a bare state dict does not say n_head: pass config=GPTConfig(...) "
                             "or the GPT2Config it was saved with")
        hf_config, state_dict = config, source
    else:
        raise TypeError(f"source must be a transformers GPT-2 model, a directory or a state dict, "
                        f"got {type(source).__name__}")
    if config is None or not isinstance(config, GPTConfig):
        config = config_from_hf_gpt2(hf_config if config is None else config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    return config, from_hf_state_dict(state_dict)


def to_hf_gpt2_state_dict(model) -> dict:
    """minimt GPT -> the state dict of transformers' GPT2LMHeadModel (Conv1D layout, lm_head)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        out[name] = tensor.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else tensor.clone()
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out
