"""Exercise checkers: `check_<name>(fn)` runs a learner's function against the reference on
several cases and says what is wrong (which case, shape or values) instead of a bare assert."""
from __future__ import annotations

from typing import Callable, Iterable

import torch


class ExerciseError(AssertionError):
    """Raised when a learner's function disagrees with the reference; the message explains how."""


def compare(name: str, got, expected, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Compare one result with the reference and raise an ExerciseError that names the problem."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise ExerciseError(f"{name}: expected a torch.Tensor, got {type(got).__name__}")
        if got.shape != expected.shape:
            raise ExerciseError(f"{name}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
        if got.dtype == torch.bool or expected.dtype == torch.bool:
            if not torch.equal(got.bool(), expected.bool()):
                wrong = (got.bool() != expected.bool()).nonzero()[0].tolist()
                raise ExerciseError(f"{name}: wrong value at index {wrong}")
            return
        if not torch.allclose(got.to(expected.dtype), expected, atol=atol, rtol=rtol):
            diff = (got.to(expected.dtype) - expected).abs()
            where = tuple(torch.nonzero(diff == diff.max())[0].tolist())
            raise ExerciseError(
                f"{name}: values differ; largest error {diff.max().item():.3g} at index {where} "
                f"(got {got.flatten()[diff.argmax()].item():.6g}, "
                f"expected {expected.flatten()[diff.argmax()].item():.6g})")
        return
    if isinstance(expected, float):
        if not isinstance(got, (int, float)) or abs(got - expected) > atol + rtol * abs(expected):
            raise ExerciseError(f"{name}: got {got!r}, expected {expected!r}")
        return
    if got != expected:
        raise ExerciseError(f"{name}: got {got!r}, expected {expected!r}")


def run_cases(exercise: str, fn: Callable, reference: Callable, cases: Iterable[tuple],
              **tolerances) -> None:
    """Call `fn` and `reference` on every case (a tuple of arguments); print a pass line or raise."""
    cases = list(cases)
    for i, args in enumerate(cases):
        try:
            got = fn(*args)
        except NotImplementedError:
            raise ExerciseError(f"{exercise}: not implemented yet (the stub still raises)") from None
        compare(f"{exercise}, case {i + 1} of {len(cases)}", got, reference(*args), **tolerances)
    print(f"{exercise}: all {len(cases)} cases pass")


# --- 01_attention: attention from the formula and its masks -----------------------------------

def run_cases_with_hints(exercise: str, fn: Callable, reference: Callable, cases: Iterable[tuple],
                         hint: Callable, **tolerances) -> None:
    """Like run_cases, but on a mismatch `hint(got, *args)` may add a sentence naming the likely bug."""
    cases = list(cases)
    for i, args in enumerate(cases):
        try:
            got = fn(*args)
        except NotImplementedError:
            raise ExerciseError(f"{exercise}: not implemented yet (the stub still raises)") from None
        try:
            compare(f"{exercise}, case {i + 1} of {len(cases)}", got, reference(*args), **tolerances)
        except ExerciseError as err:
            advice = hint(got, *args) if isinstance(got, torch.Tensor) else None
            raise ExerciseError(f"{err}. Hint: {advice}" if advice else str(err)) from None
    print(f"{exercise}: all {len(cases)} cases pass")


def _same(got, expected):
    """True when `got` equals `expected` (a known wrong answer) in shape, dtype and values."""
    return (got.shape == expected.shape and got.dtype == expected.dtype
            and torch.allclose(got, expected, atol=1e-6, rtol=1e-5))


def _attention_variant(q, k, v, mask, scale, softmax_dim=-1):
    """A common wrong version of attention, to recognise the learner's bug."""
    scores = q @ k.transpose(-2, -1) * scale                              # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=softmax_dim).nan_to_num(0.0) @ v    # (B, H, Tq, D)


def _attention_hint(got, q, k, v, mask):
    """Name the classic bug (scale, softmax axis, mask) whose output the learner's matches."""
    from .attention import scaled_dot_product_attention
    d = q.shape[-1]
    variants = [
        (_attention_variant(q, k, v, mask, 1.0), "no 1/sqrt(d_k) scaling: divide the scores "
         "Q K^T by sqrt(d_k) = sqrt(q.shape[-1]) before the softmax"),
        (_attention_variant(q, k, v, mask, 1.0 / d), "the scores are divided by d_k; divide by "
         "sqrt(d_k) instead"),
        (_attention_variant(q, k, v, mask, d ** -0.5, softmax_dim=-2), "softmax over the wrong "
         "axis: each query's weights over the keys must sum to 1, so use dim=-1"),
    ]
    if mask is not None:
        variants += [
            (scaled_dot_product_attention(q, k, v), "the mask is ignored: set the scores where "
             "mask is False to -inf before the softmax (scores.masked_fill(~mask, -inf))"),
            (_attention_variant(q, k, v, ~mask, d ** -0.5), "the mask is inverted: True means "
             "'may attend', so fill the scores where the mask is False"),
        ]
    for wrong, advice in variants:
        if _same(got, wrong):
            return advice
    return None


def _attention_cases():
    """Seeded float64 cases: no mask, causal, random (Tq != Tk) and sliding-window masks."""
    from .attention import causal_mask, local_mask
    g = torch.Generator().manual_seed(0)

    def qkv(b, h, t_q, t_k, d):  # float64 so the comparison can be tight
        return [torch.randn(b, h, t, d, generator=g, dtype=torch.float64)
                for t in (t_q, t_k, t_k)]

    random_mask = torch.rand(3, 6, generator=g) < 0.5                      # (Tq, Tk)
    random_mask[:, 0] = True  # every query may attend somewhere
    return [(*qkv(1, 1, 4, 4, 8), None),
            (*qkv(2, 3, 5, 5, 16), causal_mask(5)),
            (*qkv(2, 2, 3, 6, 4), random_mask),
            (*qkv(1, 2, 6, 6, 32), local_mask(6, 2))]


def check_attention(fn: Callable) -> None:
    """fn(q, k, v, mask) -> softmax(q k^T / sqrt(d_k)) v, with q (B, H, Tq, D), k and v (B, H, Tk, D)
    and mask None or bool (Tq, Tk), True = may attend. Checked in float64 against minimt's."""
    from .attention import scaled_dot_product_attention

    def reference(q, k, v, mask):
        return scaled_dot_product_attention(q, k, v, mask)

    run_cases_with_hints("check_attention", fn, reference, _attention_cases(), _attention_hint,
                         atol=1e-8, rtol=1e-6)


def _bool_mask(exercise: str, fn: Callable) -> Callable:
    """fn, checked to return a bool tensor: a float 0/1 mask would be *added* to the scores."""
    def wrapped(*args):
        got = fn(*args)
        if isinstance(got, torch.Tensor) and got.dtype != torch.bool:
            raise ExerciseError(
                f"{exercise}: return a bool tensor (True = may attend), not {got.dtype}; a float "
                f"mask means 'add to the scores' in torch's attention. Compare positions with <=, "
                f"which gives bools")
        return got
    return wrapped


def _mask_hint(got, known_mistakes):
    """The advice for the known mistake whose mask `got` equals, if any."""
    for wrong, advice in known_mistakes:
        if got.shape == wrong.shape and torch.equal(got, wrong):
            return advice
    return None


def check_causal_mask(fn: Callable) -> None:
    """fn(T) -> (T, T) bool, True where query i may attend to key j, i.e. j <= i."""
    from .attention import causal_mask

    def hint(got, seq_len):
        ones = torch.ones(seq_len, seq_len, dtype=torch.bool)
        return _mask_hint(got, [
            (ones.triu(), "True above the diagonal lets a query see the future: keep keys j <= i "
             "(the lower triangle, torch.tril)"),
            (ones.tril(-1), "the diagonal must be True: a token may attend to itself"),
            (ones, "nothing is masked: key j must be hidden from query i when j > i"),
        ])

    cases = [(1,), (2,), (5,), (9,)]
    run_cases_with_hints("check_causal_mask", _bool_mask("check_causal_mask", fn), causal_mask,
                         cases, hint)


def check_local_mask(fn: Callable) -> None:
    """fn(T, window) -> (T, T) bool: query i may attend to keys i-window+1 .. i (causal window)."""
    from .attention import local_mask

    def hint(got, seq_len, window):
        mistakes = [(local_mask(seq_len, w), f"the window is off by one: query i sees exactly "
                     f"`window` keys, i-window+1 .. i (found a window of {w})")
                    for w in (window - 1, window + 1) if w >= 1]
        pos = torch.arange(seq_len)
        band = (pos[:, None] - pos[None, :]).abs() < window                  # (T, T) both sides
        mistakes.append((band, "the window also looks ahead: keep only keys j <= i (causal)"))
        return _mask_hint(got, mistakes)

    cases = [(1, 1), (5, 1), (6, 2), (8, 3), (4, 10)]
    run_cases_with_hints("check_local_mask", _bool_mask("check_local_mask", fn), local_mask, cases,
                         hint)


# --- pipeline parallelism (notebook 04) ----------------------------------------------------------

def check_warmup_count(fn: Callable) -> None:
    """fn(num_stages, rank, num_microbatches) -> int: forwards a rank runs before its first
    backward in 1F1B (Megatron-LM's num_warmup_microbatches)."""
    from .parallel.pipeline import num_warmup_microbatches

    cases = [(4, 0, 8), (4, 3, 8), (4, 1, 8), (2, 0, 1), (4, 0, 2), (8, 2, 16)]
    for i, (p, rank, m) in enumerate(cases):
        try:
            got = fn(p, rank, m)
        except NotImplementedError:
            raise ExerciseError("check_warmup_count: not implemented yet "
                                "(the stub still raises)") from None
        expected = num_warmup_microbatches("1f1b", p, rank, m)
        if got != expected:
            hint = ("the last stage starts its backward right after its first forward"
                    if rank == p - 1 else
                    "a rank can never warm up with more micro-batches than there are (cap at m)"
                    if expected == m else "rank r waits for the p - r - 1 stages after it to fill")
            raise ExerciseError(f"check_warmup_count, case {i + 1} of {len(cases)} (p={p}, "
                                f"rank={rank}, m={m}): got {got!r}, expected {expected}; {hint}")
    print(f"check_warmup_count: all {len(cases)} cases pass")


def check_gpipe_schedule(fn: Callable) -> None:
    """fn(num_stages, num_microbatches) -> per rank, a list of Actions (or (op, microbatch) pairs):
    every forward, then every backward (GPipe)."""
    from .parallel.pipeline import Action, pipeline_schedule, validate_schedule

    def as_actions(schedule):
        return [[a if isinstance(a, Action) else Action(*a) for a in rank] for rank in schedule]

    cases = [(2, 1), (2, 4), (4, 8), (3, 5)]
    for i, (p, m) in enumerate(cases):
        name = f"check_gpipe_schedule, case {i + 1} of {len(cases)} (p={p}, m={m})"
        try:
            got = as_actions(fn(p, m))
        except NotImplementedError:
            raise ExerciseError("check_gpipe_schedule: not implemented yet "
                                "(the stub still raises)") from None
        if len(got) != p:
            raise ExerciseError(f"{name}: {len(got)} ranks, expected one list per stage ({p})")
        try:
            validate_schedule(got)
        except ValueError as err:
            raise ExerciseError(f"{name}: not a valid schedule: {err}") from None
        compare(name, [[repr(a) for a in rank] for rank in got],
                [[repr(a) for a in rank] for rank in pipeline_schedule("gpipe", p, m)])
    print(f"check_gpipe_schedule: all {len(cases)} cases pass")


def check_bubble_prediction(fn: Callable) -> None:
    """fn(kind, num_stages, num_microbatches, num_chunks) -> predicted idle fraction, checked
    against the event simulator's timeline (F = 1, B = 2 time units per stage)."""
    from .parallel.pipeline import pipeline_schedule, simulate

    def simulated(kind, p, m, v):
        return simulate(pipeline_schedule(kind, p, m, v)).idle_fraction()

    cases = [("gpipe", 4, 8, 1), ("1f1b", 2, 1, 1), ("1f1b", 4, 4, 1), ("naive", 4, 8, 1),
             ("interleaved", 4, 8, 2), ("interleaved", 2, 4, 3)]
    run_cases("check_bubble_prediction", fn, simulated, cases, atol=1e-9, rtol=0)


# --- 02_gpt: parameter count, learning-rate schedule, language-model loss ----------------------

def check_param_count(fn: Callable) -> None:
    """fn(config: GPTConfig) -> int: the number of parameters of GPT(config), in closed form."""
    from .config import PRESETS, GPTConfig
    from .model import param_count

    configs = [GPTConfig(), GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=64),
               GPTConfig(n_layer=3, n_embd=96, n_head=3, bias=True), GPTConfig(mlp_ratio=2),
               PRESETS["gpt2-124m"], PRESETS["mt-nlg-530b"]]
    for i, config in enumerate(configs):
        try:
            got = fn(config)
        except NotImplementedError:
            raise ExerciseError("check_param_count: not implemented yet (the stub still raises)") from None
        expected = param_count(config)
        if got != expected:
            C, V = config.n_embd, config.vocab_size
            diff = expected - got if isinstance(got, int) else None
            hint = ("count the tied token embedding / output layer V*C once, not twice"
                    if diff == -V * C else
                    "did you forget the position embedding (block_size * C)?"
                    if diff == config.block_size * C else
                    "with bias=True every Linear and LayerNorm has a bias vector too"
                    if config.bias else "per block: 4C^2 (attention) + 2*mlp_ratio*C^2 (MLP) + 2C "
                    "(two LayerNorm gains); plus the final LayerNorm's C")
            raise ExerciseError(f"check_param_count, case {i + 1} of {len(configs)} ({config}): "
                                f"got {got!r}, expected {expected:,}; {hint}")
    print(f"check_param_count: all {len(configs)} cases pass")


def check_lr_schedule(fn: Callable) -> None:
    """fn(it, learning_rate, warmup_iters, lr_decay_iters, min_lr) -> float: linear warm-up then
    cosine decay (nanoGPT's get_lr, minimt.train.lr_at)."""
    from .train import lr_at

    settings = [(1e-3, 100, 2000, 1e-4), (6e-4, 10, 50, 0.0), (1.0, 0, 10, 0.5)]
    cases = [(it, *s) for s in settings for it in (0, 1, s[1] - 1, s[1], (s[1] + s[2]) // 2,
                                                   s[2] - 1, s[2], s[2] + 5) if it >= 0]
    run_cases("check_lr_schedule", fn, lr_at, cases, atol=1e-12, rtol=1e-6)


def _lm_loss(logits, idx):
    """Reference: position t predicts token t+1, so drop the last logit and the first token."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())


def check_lm_loss(fn: Callable) -> None:
    """fn(logits (B, T, V), idx (B, T)) -> scalar mean cross entropy of predicting idx[:, t+1]
    from logits[:, t] (the causal language-modelling loss)."""
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(2, 5, 7, generator=g), torch.randint(7, (2, 5), generator=g)),
             (torch.randn(1, 2, 3, generator=g), torch.randint(3, (1, 2), generator=g)),
             (torch.randn(3, 8, 11, generator=g), torch.randint(11, (3, 8), generator=g))]
    for i, (logits, idx) in enumerate(cases):
        try:
            got = fn(logits, idx)
        except NotImplementedError:
            raise ExerciseError("check_lm_loss: not implemented yet (the stub still raises)") from None
        expected = _lm_loss(logits, idx)
        try:
            compare(f"check_lm_loss, case {i + 1} of {len(cases)}", got, expected)
        except ExerciseError as err:
            unshifted = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())
            wrong_way = torch.nn.functional.cross_entropy(logits[:, 1:].flatten(0, 1),
                                                          idx[:, :-1].flatten())
            hint = ("this is the loss without the shift: logits[:, t] must predict idx[:, t+1]"
                    if _close(got, unshifted) else
                    "shifted the wrong way: use logits[:, :-1] against idx[:, 1:]"
                    if _close(got, wrong_way) else None)
            raise ExerciseError(f"{err}. Hint: {hint}" if hint else str(err)) from None
    print(f"check_lm_loss: all {len(cases)} cases pass")


def _close(got, expected):
    return isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.allclose(
        got, expected, atol=1e-6, rtol=1e-5)


# --- 03_tensor_parallel: the column-parallel forward, where f and g go, bytes per layer --------

def _column_parallel_rank(ctx, fn, gather_output):
    """On one rank: the learner's column-parallel forward on its shard, against nn.Linear."""
    torch.manual_seed(0)
    serial = torch.nn.Linear(8, 12)                                    # A: (out, in) = (12, 8)
    x = torch.randn(2, 3, 8)                                           # (B, T, in)
    weights = torch.randn(2, 3, 12)                  # dL/dy of the loss L = sum(y * weights)
    rows = slice(ctx.tp_rank * 12 // ctx.tp_size, (ctx.tp_rank + 1) * 12 // ctx.tp_size)
    x_ref = x.clone().requires_grad_()
    y_ref = serial(x_ref)                                              # (B, T, out)
    (y_ref * weights).sum().backward()
    shard_w = serial.weight.detach()[rows].clone().requires_grad_()   # (out/tp, in)
    shard_b = serial.bias.detach()[rows].clone().requires_grad_()     # (out/tp,)
    x_mine = x.clone().requires_grad_()
    y = fn(x_mine, shard_w, shard_b, ctx, gather_output)
    (y * (weights if gather_output else weights[..., rows])).sum().backward()
    expected = y_ref if gather_output else y_ref[..., rows]            # (B, T, out or out/tp)
    return {"output": y.detach(), "expected output": expected.detach(),
            "input grad": x_mine.grad, "expected input grad": x_ref.grad,
            "weight grad": shard_w.grad, "expected weight grad": serial.weight.grad[rows],
            "bias grad": shard_b.grad, "expected bias grad": serial.bias.grad[rows]}


def _missing_grad(name: str, rank: int, result: dict) -> None:
    if result[name] is None:
        raise ExerciseError(f"rank {rank}: no {name}: the output is not connected to the input "
                            f"or the shard by autograd (use F.linear and the comm primitives)")


def check_column_parallel_forward(fn: Callable) -> None:
    """fn(x (B, T, in), weight (out/tp, in), bias (out/tp,), ctx, gather_output) -> y, run on 2
    ranks: y must be this rank's slice of x A^T + b (or all of it when gather_output), and the
    gradients of x, weight and bias must equal the serial layer's."""
    from .parallel import launch  # the exercise runs on real processes
    for gather_output in (False, True):
        try:
            results = launch(_column_parallel_rank, fn, gather_output, tp=2, timeout_s=30)
        except Exception as err:
            if "NotImplementedError" in str(err):
                raise ExerciseError("check_column_parallel_forward: not implemented yet (the stub "
                                    "still raises)") from None
            raise
        for rank, r in enumerate(results):
            where = f"check_column_parallel_forward(gather_output={gather_output}), rank {rank}"
            compare(f"{where}: output", r["output"], r["expected output"])
            for name in ("input grad", "weight grad", "bias grad"):
                _missing_grad(name, rank, r)
            try:
                compare(f"{where}: input grad", r["input grad"], r["expected input grad"])
            except ExerciseError as err:
                partial = torch.allclose(sum(q["input grad"] for q in results),
                                         r["expected input grad"], atol=1e-5)
                raise ExerciseError(
                    f"{err}. Hint: " + ("each rank's x.grad holds only its own columns' share; "
                                        "the input must enter through f "
                                        "(copy_to_tensor_model_parallel_region), whose backward "
                                        "all-reduces it" if partial else
                                        "check which primitive the input passes through")) from None
            compare(f"{where}: weight grad", r["weight grad"], r["expected weight grad"])
            compare(f"{where}: bias grad", r["bias grad"], r["expected bias grad"])
    print("check_column_parallel_forward: outputs and gradients equal nn.Linear's on 2 ranks, "
          "with gather_output False and True")


def _tp_mlp_rank(ctx, fn):
    """On one rank: the learner's tensor-parallel MLP (no biases) against the serial one."""
    torch.manual_seed(0)
    c_fc, c_proj = torch.nn.Linear(8, 32, bias=False), torch.nn.Linear(32, 8, bias=False)
    x = torch.randn(2, 3, 8)                                           # (B, T, C)
    weights = torch.randn(2, 3, 8)  # dL/dy of L = sum(y * weights)
    cols = slice(ctx.tp_rank * 32 // ctx.tp_size, (ctx.tp_rank + 1) * 32 // ctx.tp_size)
    x_ref = x.clone().requires_grad_()
    y_ref = c_proj(torch.nn.functional.gelu(c_fc(x_ref)))             # (B, T, C)
    (y_ref * weights).sum().backward()
    fc = c_fc.weight.detach()[cols].clone().requires_grad_()          # (4C/tp, C)
    proj = c_proj.weight.detach()[:, cols].clone().requires_grad_()   # (C, 4C/tp)
    x_mine = x.clone().requires_grad_()
    y = fn(x_mine, fc, proj, ctx)
    (y * weights).sum().backward()
    with torch.no_grad():  # this rank's outputs for the classic placements, to name the mistake
        partial = (lambda z: torch.nn.functional.linear(torch.nn.functional.gelu(
            torch.nn.functional.linear(z, fc)), proj))                 # (B, T, C), not summed
        mistakes = {"swapped": partial(ctx.tp_size * x), "no g": partial(x),
                    "g at entrance": c_proj(torch.nn.functional.gelu(c_fc(ctx.tp_size * x)))}
    return {"output": y.detach(), "expected output": y_ref.detach(), "mistakes": mistakes,
            "input grad": x_mine.grad, "expected input grad": x_ref.grad,
            "fc grad": fc.grad, "expected fc grad": c_fc.weight.grad[cols],
            "proj grad": proj.grad, "expected proj grad": c_proj.weight.grad[:, cols]}


def _mlp_hint(what: str, results: list[dict], rank: int, tp: int) -> str | None:
    got, expected = results[rank][what], results[rank][f"expected {what}"]
    if what == "output":
        mistakes = results[rank]["mistakes"]
        if torch.allclose(got, mistakes["swapped"], atol=1e-5):
            return ("f and g are swapped: g at the entrance all-reduces x, which is already the "
                    f"same on every rank (so the layer sees {tp}*x), and f at the exit leaves the "
                    "row-parallel partial sums un-added. Put f at the entrance, g at the exit")
        if torch.allclose(got, mistakes["no g"], atol=1e-5):
            return ("each rank holds only its partial sum: the row-parallel c_proj's output must "
                    "be all-reduced in the forward (g, reduce_from_tensor_model_parallel_region)")
        if torch.allclose(got, mistakes["g at entrance"], atol=1e-5):
            return (f"the entrance all-reduces x, which is the same on every rank (the layer sees "
                    f"{tp}*x): f (identity forward) goes there, not g")
        return None
    grads = [r[what] for r in results]
    if torch.allclose(got, tp * expected, atol=1e-5):
        return (f"the input gradient is {tp}x too large: the exit's op all-reduces in the backward "
                f"a gradient that is already the same on every rank; g (identity backward) goes "
                f"there")
    if torch.allclose(sum(grads), expected, atol=1e-5):
        return ("each rank holds only its part of the input gradient: it must be all-reduced in "
                "the backward (f, copy_to_tensor_model_parallel_region) at the entrance")
    return None


def check_tp_mlp_operators(fn: Callable) -> None:
    """fn(x (B, T, C), fc_weight (4C/tp, C), proj_weight (C, 4C/tp), ctx) -> y (B, T, C): Megatron's
    MLP, column-parallel c_fc, GELU, row-parallel c_proj, with f and g where they belong. Run on 2
    ranks; output, input gradient and both weight gradients must equal the serial MLP's."""
    from .parallel import launch
    try:
        results = launch(_tp_mlp_rank, fn, tp=2, timeout_s=30)
    except Exception as err:
        if "NotImplementedError" in str(err):
            raise ExerciseError("check_tp_mlp_operators: not implemented yet (the stub still "
                                "raises)") from None
        raise
    for what in ("output", "input grad", "fc grad", "proj grad"):
        for rank, r in enumerate(results):
            if r[what] is None:
                raise ExerciseError(f"rank {rank}: no {what}: keep x and the weights in the graph")
            try:
                compare(f"check_tp_mlp_operators, rank {rank}: {what}", r[what],
                        r[f"expected {what}"], atol=1e-5)
            except ExerciseError as err:
                hint = _mlp_hint(what, results, rank, 2) if what in ("output", "input grad") \
                    else None
                raise ExerciseError(f"{err}. Hint: {hint}" if hint else str(err)) from None
    print("check_tp_mlp_operators: output and all gradients equal the serial MLP's on 2 ranks")


def _bytes_per_layer(b: int, s: int, h: int, tp: int, bytes_per_element: int) -> tuple[int, int]:
    """Reference: 2 all-reduces of (b, s, h) forward, 2 backward; none when tp == 1."""
    per_all_reduce = b * s * h * bytes_per_element
    return (0, 0) if tp == 1 else (2 * per_all_reduce, 2 * per_all_reduce)


def check_bytes_per_layer(fn: Callable) -> None:
    """fn(b, s, h, tp, bytes_per_element) -> (forward_bytes, backward_bytes): the data one rank
    all-reduces for one transformer layer (attention + MLP) in one training step."""
    cases = [(4, 64, 128, 4, 4), (8, 128, 256, 2, 4), (1, 2048, 20480, 8, 2), (2, 16, 32, 1, 4),
             (3, 5, 7, 2, 4)]
    for i, case in enumerate(cases):
        try:
            got = fn(*case)
        except NotImplementedError:
            raise ExerciseError("check_bytes_per_layer: not implemented yet (the stub still "
                                "raises)") from None
        expected = _bytes_per_layer(*case)
        if tuple(got) == expected:
            continue
        b, s, h, tp, nbytes = case
        one = b * s * h * nbytes
        forward = tuple(got)[0]
        hint = ("with tp = 1 there is nobody to reduce with: no communication" if tp == 1 else
                "count both g's: one after attention, one after the MLP" if forward == one else
                "an all-reduce's tensor is the whole (b, s, h) activation on every rank; it does "
                "not shrink with tp" if forward in (2 * one // tp, one // tp) else
                f"multiply elements by bytes_per_element={nbytes}" if forward == 2 * b * s * h
                else None)
        message = (f"check_bytes_per_layer, case {i + 1} of {len(cases)} (b={b}, s={s}, h={h}, "
                   f"tp={tp}, {nbytes} bytes per element): got {tuple(got)}, expected {expected}")
        raise ExerciseError(f"{message}. Hint: {hint}" if hint else message)
    print(f"check_bytes_per_layer: all {len(cases)} cases pass")


# ---------------------------------------------------------------- notebook 06: generation


def check_top_p_filter(fn: Callable) -> None:
    """fn(logits (B, V), p) -> logits with -inf outside the nucleus: the smallest set of most
    likely tokens whose probabilities sum to at least p (Holtzman et al. 2019)."""
    from minimt.sampling import top_p_filter
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    cases = [(probs.log(), 0.7), (probs.log(), 0.9), (probs.log(), 0.1), (probs.log(), 1.0),
             (torch.randn(3, 10, generator=g) * 2, 0.8), (torch.randn(2, 50, generator=g), 0.5)]
    for i, (logits, p) in enumerate(cases):
        try:
            got = fn(logits.clone(), p)
        except NotImplementedError:
            raise ExerciseError("check_top_p_filter: not implemented yet (the stub still raises)") from None
        expected = top_p_filter(logits, p)
        name = f"check_top_p_filter, case {i + 1} of {len(cases)} (p={p})"
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            compare(name, got, expected)
        kept, kept_expected = got > float("-inf"), expected > float("-inf")
        if not torch.equal(kept, kept_expected):
            fewer = bool((kept <= kept_expected).all())
            hint = (" Hint: keep the token that makes the sum cross p too (remove a token only "
                    "when the tokens ranked above it already sum to >= p)" if fewer else "")
            raise ExerciseError(f"{name}: kept {kept.sum(-1).tolist()} tokens per row, expected "
                                f"{kept_expected.sum(-1).tolist()}.{hint}")
        compare(name + ", kept logits", got[kept], expected[kept])
    print(f"check_top_p_filter: all {len(cases)} cases pass")


def _kv_cache_bytes(config, bytes_per_value):
    return 2 * config.n_layer * config.n_embd * bytes_per_value


def check_kv_cache_bytes(fn: Callable) -> None:
    """fn(config, bytes_per_value) -> bytes of KV cache one token adds: a key and a value of
    n_embd numbers in each of the n_layer layers."""
    from minimt.config import GPTConfig
    cases = [(GPTConfig.from_preset(name), b) for name in ("gpt2-124m", "mt-nlg-530b") for b in (2, 4)]
    cases.append((GPTConfig(n_layer=3, n_embd=48, n_head=4), 1))
    for i, (config, b) in enumerate(cases):
        try:
            got = fn(config, b)
        except NotImplementedError:
            raise ExerciseError("check_kv_cache_bytes: not implemented yet (the stub still raises)") from None
        expected = _kv_cache_bytes(config, b)
        if got == expected // 2:
            raise ExerciseError(f"check_kv_cache_bytes, case {i + 1}: got {got}, half of {expected}. "
                                "Hint: the cache holds keys AND values")
        compare(f"check_kv_cache_bytes, case {i + 1} of {len(cases)}", got, expected)
    print(f"check_kv_cache_bytes: all {len(cases)} cases pass")


def check_greedy_until_eos(fn: Callable) -> None:
    """fn(model, input_ids (1, T), max_new_tokens, eos_token_id) -> (1, T + n): greedy tokens,
    stopping right after the first EOS (kept in the output) or after max_new_tokens."""
    from minimt.config import GPTConfig
    from minimt.model import GPT
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, block_size=40, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # a random model whose greedy text does not just repeat one token
        model.transformer.wpe.weight.mul_(10.0)
        model.transformer.wte.weight.mul_(5.0)
    prompt = torch.tensor([[1, 5, 2]])
    free = model.generate(prompt, 20)[0, 3:].tolist()
    never = next(t for t in range(13) if t not in free[:6])
    cases = [(model, prompt, 20, free[4]), (model, prompt, 20, free[0]), (model, prompt, 6, never),
             (model, torch.tensor([[7, 7, 3, 9]]), 15, free[2])]
    for i, (m, ids, n, eos) in enumerate(cases):
        try:
            with torch.no_grad():
                got = fn(m, ids, n, eos)
        except NotImplementedError:
            raise ExerciseError("check_greedy_until_eos: not implemented yet (the stub still raises)") from None
        expected = m.generate(ids, n, eos_token_id=eos)
        if isinstance(got, torch.Tensor) and got.shape[-1] == expected.shape[-1] - 1 \
                and torch.equal(got, expected[:, :-1]) and int(expected[0, -1]) == eos:
            raise ExerciseError(f"check_greedy_until_eos, case {i + 1}: the EOS token itself is "
                                "missing; append it, then stop")
        compare(f"check_greedy_until_eos, case {i + 1} of {len(cases)} (eos={eos})", got, expected)
    print(f"check_greedy_until_eos: all {len(cases)} cases pass")


def check_smallest_loss_scale(fn: Callable) -> None:
    """fn(grads: Tensor) -> float: the smallest power of two S for which no nonzero gradient
    becomes 0 when `grads * S` is cast to fp16 (minimt.formats.smallest_loss_scale)."""
    from .formats import cast, smallest_loss_scale

    g = torch.Generator().manual_seed(0)
    cases = [(torch.tensor([1e-3, 2.0 ** -30]),), (torch.tensor([2.0 ** -25]),),
             (torch.tensor([3e-9, -1e-2, 0.0]),), (torch.tensor([0.5, 1e-4]),),
             (torch.randn(1000, generator=g) * 1e-6,)]
    for i, (grads,) in enumerate(cases):
        try:
            got = fn(grads)
        except NotImplementedError:
            raise ExerciseError("check_smallest_loss_scale: not implemented yet (the stub still "
                                "raises)") from None
        expected = smallest_loss_scale(grads)
        if got != expected:
            nonzero = grads[grads != 0]
            lost = (cast(nonzero * float(got), "fp16") == 0).sum().item() if isinstance(got, (int, float)) else None
            hint = (f"with S={got!r}, {lost} gradient(s) still flush to zero: S is too small"
                    if lost else "a smaller power of two also works: look for the smallest"
                    if lost == 0 else "return a float power of two")
            raise ExerciseError(f"check_smallest_loss_scale, case {i + 1} of {len(cases)}: got "
                                f"{got!r}, expected {expected!r}; {hint}. Remember: exactly half of "
                                f"2^-24 rounds to even, i.e. to 0")
    print(f"check_smallest_loss_scale: all {len(cases)} cases pass")


def check_scaler_update(fn: Callable) -> None:
    """fn(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval) ->
    (new_scale, new_growth_tracker): one step of the dynamic loss scaler (torch.amp.GradScaler's rule)."""
    from .precision import DynamicLossScaler

    def reference(scale, tracker, found_inf, growth, backoff, interval):
        s = DynamicLossScaler(scale, growth, backoff, interval)
        s.growth_tracker = tracker
        s.update(found_inf)
        return s.scale, s.growth_tracker

    cases = [(65536.0, 0, True, 2.0, 0.5, 2000), (65536.0, 5, True, 2.0, 0.5, 2000),
             (65536.0, 0, False, 2.0, 0.5, 2000), (65536.0, 1998, False, 2.0, 0.5, 2000),
             (65536.0, 1999, False, 2.0, 0.5, 2000), (8.0, 2, False, 4.0, 0.25, 3),
             (8.0, 2, True, 4.0, 0.25, 3), (1.0, 0, False, 2.0, 0.5, 1)]
    for i, args in enumerate(cases):
        try:
            got = fn(*args)
        except NotImplementedError:
            raise ExerciseError("check_scaler_update: not implemented yet (the stub still raises)") from None
        expected = reference(*args)
        if not isinstance(got, tuple) or tuple(got) != expected:
            scale, tracker, found_inf = args[:3]
            hint = ("on overflow: scale * backoff_factor and the tracker back to 0" if found_inf else
                    "grow only when the tracker reaches growth_interval, then reset it to 0"
                    if tracker + 1 == args[5] else "a finite step only counts: tracker + 1")
            raise ExerciseError(f"check_scaler_update, case {i + 1} of {len(cases)} "
                                f"(scale={scale}, tracker={tracker}, found_inf={found_inf}, "
                                f"interval={args[5]}): got {got!r}, expected {expected!r}; {hint}")
    print(f"check_scaler_update: all {len(cases)} cases pass")


def check_prune_half(fn: Callable) -> None:
    """fn(weight: Tensor) -> bool mask of the same shape keeping the 50% of entries with the
    largest |w| (magnitude pruning of one matrix to 50%)."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.tensor([[0.3, -2.0], [0.1, -0.05]]), torch.randn(8, 6, generator=g),
               torch.randn(32, 16, generator=g) * 0.02]

    def reference(w):
        keep = torch.zeros(w.numel(), dtype=torch.bool)
        keep[w.abs().flatten().argsort(descending=True)[:w.numel() // 2]] = True
        return keep.view_as(w)

    for i, w in enumerate(weights):
        try:
            got = fn(w.clone())
        except NotImplementedError:
            raise ExerciseError("check_prune_half: not implemented yet (the stub still raises)") from None
        if isinstance(got, torch.Tensor) and got.shape == w.shape and got.dtype == torch.bool:
            if got.sum().item() != w.numel() // 2:
                raise ExerciseError(f"check_prune_half, case {i + 1}: the mask keeps "
                                    f"{got.sum().item()} of {w.numel()} entries, expected half")
            kept, dropped = w.abs()[got], w.abs()[~got]
            if kept.min() < dropped.max():
                raise ExerciseError(f"check_prune_half, case {i + 1}: kept |w|={kept.min():.3g} "
                                    f"but dropped the larger |w|={dropped.max():.3g}: rank by "
                                    "absolute value (a large negative weight matters too)")
        compare(f"check_prune_half, case {i + 1} of {len(weights)}", got, reference(w))
    print(f"check_prune_half: all {len(weights)} cases pass")
