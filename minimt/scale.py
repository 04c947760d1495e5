"""The scale calculator: parameters, FLOPs, time and memory per GPU of a training layout.

`estimate(config, tp, pp, dp, micro_batch_size, global_batch_size, ...)` answers, without
building anything, the questions a 530B run starts with: how long is an iteration at a given
throughput (Narayanan et al. 2021, arXiv 2104.04473, eq. 3), how long is the whole run, and does
the most loaded GPU fit its memory (ZeRO's bytes per parameter, Rajbhandari et al. 2019, arXiv
1910.02054; activations per layer from Korthikanti et al. 2022, arXiv 2205.05198, Table 2, or
minimt's own measured formula). `best_layout` picks a layout that fits.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from .config import GPTConfig
from .memory import layer_activation_bytes
from .model import RECOMPUTE_MODES, param_count
from .scale_checks import (ZERO_STAGES, check_achieved_tflops, check_gpu_bytes,
                           check_positive_ints, check_zero)

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# bytes per parameter (weight, gradient, optimizer state) of mixed-precision AdamW, by convention:
# "zero": Rajbhandari et al. 2019 (arXiv 1910.02054), 2 + 2 + 12 = 16 (16-bit weight and gradient;
#   fp32 master weight, momentum, variance), DeepSpeed's estimators;
# "megatron": Megatron-LM's theoretical_memory_usage.py, 2 + 4 + 12 = 18: the gradient is
#   accumulated in an fp32 "main gradient" buffer (its distributed optimizer: 6 + 12/d).
# fp32 training is 4 + 4 + 8 = 16 in both.
BYTES_PER_PARAMETER = {"zero": (2, 2, 12), "megatron": (2, 4, 12)}
ACTIVATION_MODELS = ("megatron", "minimt")
GPU_BYTES = 80 * 2**30  # an 80 GB A100 or H100 (80 GiB)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layout_error(config: GPTConfig, tp: int, pp: int, dp: int, micro_batch_size: int,
                 global_batch_size: int, sequence_parallel: bool = False) -> str | None:
    """Why this layout does not divide the model or the batch, naming the fix; None when it does."""
    L, a, s = config.n_layer, config.n_head, config.block_size
    mlp = config.mlp_ratio * config.n_embd
    per_step = dp * micro_batch_size
    rules = [  # (n, d, what, by, the fix: a function, so divisors are listed only on failure)
        (L, pp, "n_layer", "pp", lambda: f"every stage needs as many layers; use pp in "
                                         f"{_divisors(L)}"),
        (a, tp, "n_head", "tp", lambda: f"every rank needs whole heads; use tp in {_divisors(a)}"),
        (mlp, tp, "MLP hidden size", "tp", lambda: f"use tp in {_divisors(mlp)[:12]}"),
        (global_batch_size, per_step, "global_batch_size", "dp x micro_batch_size",
         lambda: f"{dp} x {micro_batch_size} = {per_step} sequences per micro-step; use a global "
                 f"batch that is a multiple of {per_step} (e.g. "
                 f"{max(1, global_batch_size // per_step) * per_step}) or dp x micro_batch_size "
                 f"in {_divisors(global_batch_size)[:12]}"),
    ]
    if sequence_parallel:
        rules.append((s, tp, "sequence length (block_size)", "tp",
                      lambda: f"sequence parallelism splits the tokens; use tp in "
                              f"{_divisors(s)[:12]}"))
    for n, d, what, by, fix in rules:
        if n % d:
            return f"{what}={n} is not divisible by {by}={d}: {fix()}"
    return None


def megatron_layer_activation_bytes(s: int, b: int, h: int, a: int, t: int = 1,
                                    sequence_parallel: bool = False,
                                    recompute: str = "none") -> float:
    """Korthikanti et al. 2022, Table 2: 16-bit activations and 1-byte dropout masks per layer.

    none: sbh(10 + 24/t + 5as/(ht)) (t = 1: sbh(34 + 5as/h)); with sequence parallelism
    sbh(34/t + 5as/(ht)); selective recomputation drops the 5as/(ht) term; full recomputation
    keeps the layer input, 2sbh (2sbh/t when it is sequence-parallel).
    """
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute={recompute!r}: choose one of {RECOMPUTE_MODES}")
    if recompute == "full":
        return 2 * s * b * h / (t if sequence_parallel else 1)
    attention_core = 0.0 if recompute == "selective" else 5 * a * s / (h * t)
    linear_part = 34 / t if sequence_parallel else 10 + 24 / t
    return s * b * h * (linear_part + attention_core)


@dataclass(frozen=True)
class Estimate:
    """What one layout costs. Memory is per GPU of the most loaded pipeline stage, in bytes."""
    config: GPTConfig
    tp: int
    pp: int
    dp: int
    micro_batch_size: int
    global_batch_size: int
    recompute: str
    sequence_parallel: bool
    zero: int                      # ZeRO stage 0-3 (True from older callers means 1)
    dtype: str
    achieved_tflops: float | None
    params: int                    # the whole model (minimt.model.param_count)
    flops_per_iteration: float     # one global batch, forward + backward (+ recomputation)
    num_microbatches: int          # per data-parallel replica per iteration
    bubble: float                  # pipeline bubble time / ideal time, (p - 1) / m
    memory_bytes_per_gpu: dict = field(default_factory=dict)
    cp: int = 1                    # context parallel: the sequence split over cp GPUs (ring)
    schedule: str = "1f1b"         # pipeline schedule, see pipeline_bubble_ratio

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def tokens_per_iteration(self) -> int:
        return self.global_batch_size * self.config.block_size

    @property
    def iteration_time_s(self) -> float | None:
        """flops_per_iteration / (GPUs x achieved FLOP/s per GPU); None without a throughput."""
        if self.achieved_tflops is None:
            return None
        return self.flops_per_iteration / (self.num_gpus * self.achieved_tflops * 1e12)

    def iterations(self, tokens: float, ramp=None) -> int:
        """Optimizer steps to train on `tokens`; with a batch-size ramp (minimt.recipe.Ramp, e.g.
        MT_NLG_RAMP) the small early batches add steps: MT-NLG, 80,087 instead of 68,665."""
        samples = int(tokens // self.config.block_size)
        if ramp is not None:
            return ramp.count(samples)[1]
        return -(-samples // self.global_batch_size)

    def training_time_s(self, tokens: float, ramp=None) -> float:
        """Seconds to train on `tokens` at the achieved throughput: iterations x iteration time.
        With a batch-size ramp (minimt.recipe.Ramp) each step of global batch b runs b / (micro x
        dp) micro-batches through the same p - 1 bubble slots: (m_b + p - 1) / (m + p - 1) of a
        full iteration, so the ramp's small batches cost more time per sample."""
        if self.achieved_tflops is None:
            raise ValueError("training_time_s needs achieved_tflops (per GPU) in estimate(...)")
        if ramp is None:
            return tokens / self.tokens_per_iteration * self.iteration_time_s
        slots = self.num_microbatches + self.pp - 1                 # of a full iteration
        per_replica = self.micro_batch_size * self.dp
        sizes = ramp.steps(int(tokens // self.config.block_size))  # global batch of every step
        steps = sum((-(-b // per_replica) + self.pp - 1) / slots for b in sizes)  # in full ones
        return steps * self.iteration_time_s

    def fits(self, gpu_bytes: float = GPU_BYTES) -> bool:
        """True when the most loaded GPU's total is at most gpu_bytes."""
        check_gpu_bytes(gpu_bytes)
        return self.memory_bytes_per_gpu["total"] <= gpu_bytes

    @property
    def dominant(self) -> str:
        """The largest memory term: "weights", "gradients", "optimizer" or "activations"."""
        terms = {k: v for k, v in self.memory_bytes_per_gpu.items() if k != "total"}
        return max(terms, key=terms.get)

    def summary(self, gpu_bytes: float = GPU_BYTES) -> str:
        """A few readable lines: layout, time, memory per GPU, whether it fits."""
        mem = self.memory_bytes_per_gpu
        lines = [f"tp={self.tp} pp={self.pp} dp={self.dp} ({self.num_gpus} GPUs), micro-batch "
                 f"{self.micro_batch_size} x {self.num_microbatches}, recompute={self.recompute}, "
                 f"SP={self.sequence_parallel}, ZeRO-{self.zero}, {self.dtype}",
                 f"params {self.params / 1e9:.1f}B, {self.flops_per_iteration:.3e} FLOP per "
                 f"iteration, bubble (p-1)/m = {self.bubble:.3f}"]
        if self.achieved_tflops is not None:
            lines.append(f"iteration {self.iteration_time_s:.1f} s at "
                         f"{self.achieved_tflops:g} TFLOP/s per GPU")
        lines.append("memory per GPU (GiB): " + ", ".join(
            f"{k} {v / 2**30:.1f}" for k, v in mem.items()))
        verdict = "fits" if self.fits(gpu_bytes) else "does NOT fit"
        lines.append(f"{verdict} in {gpu_bytes / 2**30:.0f} GiB; largest term: {self.dominant}")
        return "\n".join(lines)


def flops_per_iteration(config: GPTConfig, global_batch_size: int,
                        recompute: str = "full") -> float:
    """Forward + backward FLOPs of one batch (Narayanan et al. 2021, eq. 3 and its derivation).

    A layer's forward: (8 + 4r) B s h^2 for its matmuls (24 B s h^2 with r = 4) and 4 B s^2 h
    for attention; the logits 2 B s h V. Backward costs 2x forward; full recomputation adds one
    more forward of every layer, selective only of the attention core. With r = 4 and "full":
    96 B s l h^2 (1 + s/(6h) + V/(16 l h)).
    """
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute={recompute!r}: choose one of {RECOMPUTE_MODES}")
    B, s, h = global_batch_size, config.block_size, config.n_embd
    l, V, r = config.n_layer, config.vocab_size, config.mlp_ratio
    layer_matmuls, attention = (8 + 4 * r) * B * s * h * h, 4 * B * s * s * h
    logits = 2 * B * s * h * V
    extra = {"none": 0, "selective": attention, "full": layer_matmuls + attention}[recompute]
    return 3 * (l * (layer_matmuls + attention) + logits) + l * extra


def end_to_end_training_time_s(tokens: float, params: float, num_gpus: int,
                               achieved_tflops: float, recompute: str = "full") -> float:
    """Narayanan et al. 2021, eq. 4: about 8 T P / (n X) seconds with full recomputation (6 T P /
    (n X) without): eq. 3 per token without its s/(6h) and V/(16lh) terms, so ~2-3% below
    Estimate.training_time_s."""
    for name, value in (("tokens", tokens), ("params", params), ("num_gpus", num_gpus)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"{name}={value!r} must be a positive number")
    check_achieved_tflops(achieved_tflops)
    if achieved_tflops is None:
        raise ValueError("achieved_tflops=None: give the TFLOP/s each GPU achieves (MT-NLG: "
                         "113-126 on A100s)")
    factor = 8 if recompute == "full" else 6
    return factor * tokens * params / (num_gpus * achieved_tflops * 1e12)


def stage_params_per_gpu(config: GPTConfig, tp: int, pp: int) -> int:
    """Parameters one GPU of the most loaded pipeline stage holds: its layers' share (matmul
    weights and column biases split over tp, LayerNorms and row biases replicated) plus the
    first stage's embeddings or the last stage's LayerNorm and copy of the tied output layer."""
    C, r, V, T = config.n_embd, config.mlp_ratio, config.vocab_size, config.block_size
    b = 1 if config.bias else 0
    sharded = 4 * C * C + 2 * r * C * C + b * (3 * C + r * C)
    replicated = 2 * C * (1 + b) + 2 * C * b
    layers = config.n_layer // pp * (sharded // tp + replicated)
    vocab = -(-V // tp) * C  # vocabulary padded to a multiple of tp, split over tp
    first = vocab + T * C + (C * (1 + b) if pp == 1 else 0)
    last = vocab + C * (1 + b)
    return layers + (first if pp == 1 else max(first, last))


def _check_best_layout_inputs(config: GPTConfig, num_gpus, global_batch_size, gpu_bytes,
                              max_tp: int, micro_batch_size: int, sequence_parallel: bool) -> None:
    """Say which rule rules out every layout before searching: the GPU count, the memory unit,
    or divisibility (only a real lack of memory is left for "no layout fits")."""
    check_positive_ints(num_gpus=num_gpus, global_batch_size=global_batch_size, max_tp=max_tp,
                        micro_batch_size=micro_batch_size)
    check_gpu_bytes(gpu_bytes)
    problems = [layout_error(config, tp, pp, num_gpus // (tp * pp), micro_batch_size,
                             global_batch_size, sequence_parallel)
                for tp in _divisors(num_gpus) if tp <= max_tp for pp in _divisors(num_gpus // tp)]
    if all(problems):
        raise ValueError(f"no split of {num_gpus} GPUs into tp x pp x dp divides the model and the "
                         f"batch (e.g. tp=1, pp=1, dp={num_gpus}: {problems[0]}); change "
                         f"num_gpus or global_batch_size")


def zero_state_bytes(n_params: float, dp: int, zero: int = 0, dtype_bytes: int = 2,
                     bytes_per_parameter: str = "zero") -> dict[str, float]:
    """Bytes of weights, gradients and optimizer state per GPU for n_params parameters under ZeRO
    stage `zero` over dp ranks (Rajbhandari et al. 2019, Figure 1, K = 12 for mixed precision):
    stage 0: (2 + 2 + K) n, 1: (2 + 2) n + K n/dp, 2: 2n + (2 + K) n/dp, 3: (2 + 2 + K) n/dp.
    dtype_bytes 4 (fp32 training): 4 + 4 + 8. bytes_per_parameter: see BYTES_PER_PARAMETER
    ("megatron", zero=1: Megatron-LM's distributed optimizer, 6 + 12/d).
    Only the model states of ZeRO's Figure 1, no buffers. DeepSpeed's estimators add theirs:
    estimate_zero2_model_states_mem_needs counts 4 n + 16 n/dp (it keeps a full 16-bit gradient
    buffer and fp32 gradient partitions), estimate_zero3_model_states_mem_needs 18 n/dp plus
    4 x the largest layer (one layer's weights and gradients gathered at a time)."""
    zero = check_zero(zero)
    check_positive_ints(dp=dp)
    if isinstance(n_params, bool) or not isinstance(n_params, numbers.Real) or n_params < 0:
        raise ValueError(f"n_params={n_params!r} must be a number of parameters >= 0")
    weight, grad, optimizer = BYTES_PER_PARAMETER[bytes_per_parameter] if dtype_bytes == 2 else (
        4, 4, 8)
    shards = {stage: dp if zero >= stage else 1 for stage in ZERO_STAGES}  # stage s shards more
    return {"weights": n_params * weight / shards[3], "gradients": n_params * grad / shards[2],
            "optimizer": n_params * optimizer / shards[1]}


def estimate(config: GPTConfig, tp: int, pp: int, dp: int, micro_batch_size: int,
             global_batch_size: int, achieved_tflops: float | None = None,
             recompute: str = "full", sequence_parallel: bool = False, zero: int = 0,
             dtype: str = "bf16", activation_model: str = "megatron",
             bytes_per_parameter: str = "zero", cp: int = 1, schedule: str = "1f1b") -> Estimate:
    """Time and memory of training `config` on tp x pp x dp GPUs with 1F1B pipelining.

    Memory per GPU: bytes_per_parameter="zero" (ZeRO's accounting, 2 + 2 + 12 bytes: 16-bit
    weight and gradient, fp32 master weight, momentum, variance) or "megatron" (Megatron-LM's
    theoretical_memory_usage.py, 2 + 4 + 12: fp32 main gradients); fp32 training 4 + 4 + 8.
    zero (Rajbhandari et al. 2019, arXiv 1910.02054, Figure 1) shards over dp: 0 nothing,
    1 the optimizer state (2 + 2 + 12/N_d), 2 also the gradients (2 + 14/N_d), 3 also the
    weights (16/N_d); zero=True means 1. Activations: the stage's layers
    times the micro-batches in flight on the first stage of 1F1B, min(pp, m); per layer
    Korthikanti's Table 2 (activation_model="megatron") or minimt's measured formula ("minimt",
    fused attention). Left out: the embeddings' and the loss's activations, the working memory
    of a layer being recomputed, communication buffers and allocator fragmentation.
    cp: context-parallel GPUs per tp x pp group (ring attention): each holds s/cp of every
    sequence, so its activations are those of length s/cp. schedule "zb-h1": the bubble of
    pipeline_bubble_ratio (F = B = W).
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"estimate needs a GPTConfig, got {type(config).__name__}")
    check_positive_ints(tp=tp, pp=pp, dp=dp, micro_batch_size=micro_batch_size,
                        global_batch_size=global_batch_size)
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r}: choose one of {sorted(DTYPE_BYTES)}")
    check_achieved_tflops(achieved_tflops)
    if activation_model not in ACTIVATION_MODELS:
        raise ValueError(f"activation_model={activation_model!r}: choose one of "
                         f"{ACTIVATION_MODELS}")
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute={recompute!r}: choose one of {RECOMPUTE_MODES}")
    zero = check_zero(zero)
    if not isinstance(sequence_parallel, bool):
        raise ValueError(f"sequence_parallel={sequence_parallel!r} must be True or False")
    if bytes_per_parameter not in BYTES_PER_PARAMETER:
        raise ValueError(f"bytes_per_parameter={bytes_per_parameter!r}: choose one of "
                         f"{sorted(BYTES_PER_PARAMETER)}")
    problem = layout_error(config, tp, pp, dp, micro_batch_size, global_batch_size,
                           sequence_parallel)
    if problem:
        raise ValueError(problem)
    if isinstance(cp, bool) or not isinstance(cp, int) or cp < 1 or config.block_size % (2 * cp):
        raise ValueError(f"cp={cp!r} must be a positive integer with block_size="
                         f"{config.block_size} divisible by 2 * cp (zig-zag: 2 chunks per rank)")
    L, a, s = config.n_layer, config.n_head, config.block_size // cp
    m = global_batch_size // (dp * micro_batch_size)
    e = DTYPE_BYTES[dtype]
    n_params = stage_params_per_gpu(config, tp, pp)
    if activation_model == "megatron":
        per_layer = megatron_layer_activation_bytes(s, micro_batch_size, config.n_embd, a, tp,
                                                    sequence_parallel, recompute) * e / 2
    else:
        per_layer = layer_activation_bytes(s, micro_batch_size, config.n_embd, a, tp,
                                           sequence_parallel, recompute, "fused", e,
                                           config.mlp_ratio)
    memory = {**zero_state_bytes(n_params, dp, zero, e, bytes_per_parameter),
              "activations": per_layer * (L // pp) * min(pp, m)}
    memory["total"] = sum(memory.values())
    return Estimate(config, tp, pp, dp, micro_batch_size, global_batch_size, recompute,
                    sequence_parallel, zero, dtype, achieved_tflops, param_count(config),
                    flops_per_iteration(config, global_batch_size, recompute), m,
                    pipeline_bubble_ratio(pp, m, schedule), memory, cp, schedule)


def pipeline_bubble_ratio(pp: int, m: int, schedule: str = "1f1b", forward: float = 1.0,
                          backward_input: float = 1.0, backward_weight: float = 1.0) -> float:
    """Bubble time / ideal time m (F+B+W) of one pipeline step: 1F1B (p-1)(F+B+W), ZB-H1
    (p-1)(F+B-W) (Qi et al. 2024, arXiv 2401.10241); F = B = W makes ZB-H1's a third of 1F1B's."""
    from .parallel.zero_bubble import bubble_formula
    check_positive_ints(pp=pp, m=m)
    work = forward + backward_input + backward_weight
    return bubble_formula(schedule, pp, forward, backward_input, backward_weight) / (m * work)


def best_layout(config: GPTConfig, num_gpus: int, global_batch_size: int,
                gpu_bytes: float = GPU_BYTES, max_tp: int = 8, **options) -> Estimate:
    """Among the layouts tp x pp x dp = num_gpus (tp <= max_tp, one node) that divide the model
    and the batch and fit gpu_bytes, the one with the least bubble; ties go to the least model
    parallelism (tp x pp), then the smaller tp. `options` go to estimate (micro_batch_size 1
    unless given). Raises ValueError when nothing fits."""
    _check_best_layout_inputs(config, num_gpus, global_batch_size, gpu_bytes, max_tp,
                              options.get("micro_batch_size", 1),
                              options.get("sequence_parallel", False))
    ### BEGIN SOLUTION
    micro_batch_size = options.pop("micro_batch_size", 1)
    best = None
    for tp in range(1, min(max_tp, num_gpus) + 1):
        for pp in range(1, num_gpus // tp + 1):
            dp = num_gpus // (tp * pp)
            if tp * pp * dp != num_gpus or layout_error(
                    config, tp, pp, dp, micro_batch_size, global_batch_size,
                    options.get("sequence_parallel", False)):
                continue
            est = estimate(config, tp, pp, dp, micro_batch_size, global_batch_size, **options)
            key = (est.bubble, tp * pp, tp)
            if est.fits(gpu_bytes) and (best is None or key < best[0]):
                best = (key, est)
    if best is None:
        raise ValueError(f"no layout of {num_gpus} GPUs fits {gpu_bytes / 2**30:.0f} GiB per GPU; "
                         f"add GPUs, recompute activations, or shard the optimizer (zero=True)")
    return best[1]
    ### END SOLUTION


def rescheduled_iteration_time(measured_s: float, pp: int, m: int, schedule: str,
                               measured_schedule: str = "1f1b") -> float:
    """The iteration time of a run measured at `measured_s` under `measured_schedule` had it
    used `schedule`, everything else equal: measured / (1 + old bubble ratio) x (1 + new one)."""
    ideal = measured_s / (1 + pipeline_bubble_ratio(pp, m, measured_schedule))
    return ideal * (1 + pipeline_bubble_ratio(pp, m, schedule))
