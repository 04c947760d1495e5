"""Activation memory: the bytes autograd saves for backward, measured exactly, and minimt's
closed form for one transformer layer (Korthikanti et al. 2022, arXiv 2205.05198, section 4).

`SavedTensorBytes` hooks every tensor autograd saves during a forward pass
(torch.autograd.graph.saved_tensors_hooks) and adds up the storages behind them, each storage
once (q, k and v are views of one qkv tensor) and parameters left out (they are weights, not
activations). `layer_activation_terms` says, tensor by tensor, what one of minimt's blocks saves.
"""
from __future__ import annotations

import torch

from .model import RECOMPUTE_MODES
from .scale_checks import check_positive_ints

ATTENTION_KINDS = ("fused", "formula")  # torch's fused kernel, or minimt's softmax(QK^T/sqrt(d))V


class SavedTensorBytes:
    """with SavedTensorBytes(exclude=model) as saved: loss = model(x)...  then saved.bytes.

    Counts the storage of every tensor saved for backward inside the block once; storages of
    `exclude` (a module, whose parameters and buffers are skipped, a tensor, or an iterable of
    them) are not counted.
    `saved.tensors` lists (shape, dtype, storage bytes) of each storage counted, in order.
    """

    def __init__(self, exclude=()):
        items = [exclude] if isinstance(exclude, (torch.nn.Module, torch.Tensor)) else exclude
        tensors = []
        for item in items:
            if isinstance(item, torch.nn.Module):
                tensors += [*item.parameters(), *item.buffers()]
            else:
                tensors.append(item)
        self.excluded = {_storage_key(t) for t in tensors}
        self.storages: dict = {}  # storage key -> (shape, dtype, bytes) of its first saved tensor
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda saved: saved)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """Called by autograd for every tensor it saves: note its storage once, keep the tensor."""
        ### BEGIN SOLUTION
        key = _storage_key(tensor)
        if key not in self.excluded and key not in self.storages:
            self.storages[key] = (tuple(tensor.shape), tensor.dtype,
                                  tensor.untyped_storage().nbytes())
        ### END SOLUTION
        return tensor

    @property
    def bytes(self) -> int:
        """Total bytes of the distinct storages saved for backward."""
        return sum(nbytes for _, _, nbytes in self.storages.values())

    @property
    def tensors(self) -> list[tuple]:
        """(shape, dtype, bytes) of each counted storage, in the order they were saved."""
        return list(self.storages.values())

    def __enter__(self) -> "SavedTensorBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._hooks.__exit__(*exc_info)


def _storage_key(tensor: torch.Tensor) -> tuple:
    """Identifies the memory behind a tensor: views of one storage share it."""
    return tensor.device, tensor.untyped_storage().data_ptr()


def measure_layer(model, x: torch.Tensor, layer: int = 0) -> SavedTensorBytes:
    """What block `layer` of a GPT saves for backward on input x (B, T, C) (or its
    sequence-parallel slice), under the model's recompute mode; the block's own input included."""
    x = x.detach().requires_grad_()
    with SavedTensorBytes(exclude=model) as saved:
        model.run_block(model.transformer.h[layer], x)
    return saved


def check_activation_shape(**sizes) -> None:
    """Sizes are positive integers; dtype_bytes is a real element size (1, 2, 4 or 8)."""
    check_positive_ints(**sizes)
    if sizes.get("dtype_bytes", 4) not in (1, 2, 4, 8):
        raise ValueError(f"dtype_bytes={sizes['dtype_bytes']}: give an element size in bytes, 1, "
                         f"2 (bf16/fp16), 4 (fp32) or 8")


def mlp_activation_bytes(s: int, b: int, h: int, t: int = 1, dtype_bytes: int = 4,
                         mlp_ratio: int = 4) -> int:
    """Bytes minimt's MLP saves on one tensor-parallel rank: the c_fc input (full width, s*b*h),
    the GELU input and the c_proj input (each s*b*r*h/t), all in the activation dtype."""
    check_activation_shape(s=s, b=b, h=h, t=t, dtype_bytes=dtype_bytes, mlp_ratio=mlp_ratio)
    ### BEGIN SOLUTION
    return s * b * h * dtype_bytes + 2 * s * b * (mlp_ratio * h // t) * dtype_bytes
    ### END SOLUTION


def layer_activation_terms(s: int, b: int, h: int, a: int, t: int = 1,
                           sequence_parallel: bool = False, recompute: str = "none",
                           attention: str = "fused", dtype_bytes: int = 4,
                           mlp_ratio: int = 4) -> dict[str, int]:
    """Bytes one minimt block saves for backward on one tensor-parallel rank, tensor by tensor.

    s sequence, b micro-batch, h hidden, a heads, t tensor-parallel size; dropout 0, the model
    held in the activation dtype (dtype_bytes: 4 fp32, 2 bf16), measured on the CPU (LayerNorm
    statistics in the activation dtype; the fused kernel's log-sum-exp always fp32).
    With sequence parallelism the LayerNorms (and the residual stream) hold s/t of the tokens,
    and so do the inputs that c_attn and c_fc save: as in Megatron-LM (Korthikanti et al. 2022,
    section 4.2.2) they keep their sequence shard and all-gather it again in backward.
    """
    check_activation_shape(s=s, b=b, h=h, a=a, t=t, dtype_bytes=dtype_bytes, mlp_ratio=mlp_ratio)
    if h % a or a % t:
        raise ValueError(f"h={h} must be divisible by a={a} heads, and a by t={t} (whole heads "
                         f"per tensor-parallel rank)")
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute={recompute!r}: choose one of {RECOMPUTE_MODES}")
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention={attention!r}: choose one of {ATTENTION_KINDS}")
    e, ls = dtype_bytes, s // t if sequence_parallel else s  # ls: tokens in the LayerNorms
    if recompute == "full":
        return {"block input (all that full recomputation keeps)": ls * b * h * e}
    terms = {
        "ln_1 input": ls * b * h * e,
        "ln_1 mean and 1/std": 2 * ls * b * e,
        "c_attn input (the sequence shard under SP)": ls * b * h * e,
    }
    if recompute == "selective":
        terms["q, k, v (input of the recomputed core)"] = 3 * s * b * h * e // t
    elif attention == "fused":
        terms["q, k, v"] = 3 * s * b * h * e // t
        terms["log-sum-exp per query (fp32)"] = 4 * a // t * s * b
    else:  # minimt's formula computes in fp32 at least (16-bit inputs are upcast)
        ce = max(e, 4)
        terms["q, k, v (contiguous copies for the matmuls, >= fp32)"] = 3 * s * b * h * ce // t
        terms["softmax output (>= fp32)"] = a // t * s * s * b * ce
        terms["masked weights (input of weights @ v, >= fp32)"] = a // t * s * s * b * ce
        terms["causal masks, bool (2 per layer)"] = 2 * s * s
    # the fused kernel writes its output as (B, T, H, D), so concatenating heads is a view of it
    terms["c_proj input (attention output, heads concatenated)"] = s * b * h * e // t
    terms["ln_2 input"] = ls * b * h * e
    terms["ln_2 mean and 1/std"] = 2 * ls * b * e
    terms["MLP: c_fc input, GELU input, c_proj input"] = mlp_activation_bytes(
        s, b, h, t, dtype_bytes, mlp_ratio) - (s - ls) * b * h * e  # c_fc keeps ls tokens
    return terms


def layer_activation_bytes(*args, **kwargs) -> int:
    """Total of `layer_activation_terms` (same arguments)."""
    return sum(layer_activation_terms(*args, **kwargs).values())
