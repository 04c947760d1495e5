"""Tasks of 08_memory_and_scale: the saved-bytes counter, the MLP's activation bytes, and the
layout that fits a GPU with the least bubble. Each is checked against an independent oracle:
bytes worked out by hand, a measurement with torch's own saved-tensor hooks, and for the layout
the properties checked with `minimt.scale.estimate` plus the expected best layout's hash and bubble
(computed by a search the student copy does not carry)."""
from __future__ import annotations

import importlib

import torch

from .core import ExerciseError, Task, unfinished


def _target(module: str, name: str):
    """The learner's function or class, imported at call time (so an edit is picked up)."""
    from ..course.repo import refuse_graded_package
    refuse_graded_package(f"{module}.{name}")     # nbgrader grading the instructor's package
    return getattr(importlib.import_module(module), name)


def _not_written(task_id: str, err: NotImplementedError) -> ExerciseError:
    """What to write and where, as every task says it (or which earlier task is missing)."""
    task = next(t for t in TASKS if t.id == task_id)
    return unfinished(task.id, task.statement, task.target, task.section, str(err))


def check_saved_tensor_bytes() -> None:
    """SavedTensorBytes.pack counts each saved storage once and skips excluded parameters."""
    SavedTensorBytes = _target("minimt.memory", "SavedTensorBytes")
    x = torch.randn(4, 8, requires_grad=True)                     # 128 bytes
    linear = torch.nn.Linear(8, 24, bias=False)
    cases = [  # (name, forward, expected bytes worked out by hand, likely mistake)
        ("y = x.exp() saves its output (4 x 8 fp32)", lambda: x.exp(), 128, None),
        ("y = x * x saves x twice: one storage", lambda: x * x, 128,
         "the same storage saved twice is in memory once: key by untyped_storage().data_ptr()"),
        ("q, k, v = split of one (4, 24) tensor; q * k * v", lambda: _qkv_product(x), 384 + 128,
         "q, k and v are views of one storage: count tensor.untyped_storage().nbytes() once"),
        ("linear(x): x is an activation, the weight is a parameter", lambda: linear(x), 128,
         "skip storages listed in self.excluded (the model's parameters)"),
        ("x.bfloat16().sin() saves a 2-byte copy", lambda: x.bfloat16().sin(), 64,
         "count bytes of the storage (element size 2 for bf16), not elements"),
    ]
    for i, (name, forward, expected, hint) in enumerate(cases):
        try:
            with SavedTensorBytes(exclude=linear) as saved:
                forward()
            got = saved.bytes
        except NotImplementedError as err:
            raise _not_written("08.1", err) from None
        if got != expected:
            raise ExerciseError(f"task 08.1, case {i + 1} of {len(cases)} ({name}): counted {got} "
                                f"bytes, expected {expected}" + (f". Hint: {hint}" if hint else ""))
    print(f"task 08.1: SavedTensorBytes.pack passes all {len(cases)} cases")


def _qkv_product(x):
    qkv = torch.cat([x, x, x], dim=-1)                           # (4, 24): a new 384-byte storage
    q, k, v = qkv.split(8, dim=-1)
    return q * k * v                                               # saves q, k (qkv) and q*k, v


def _measured_mlp_bytes(s, b, h, t, dtype, ratio):
    """One tensor-parallel rank's MLP (c_fc out r*h/t, GELU, c_proj in r*h/t), measured with
    torch's hooks: the storages of all saved tensors but the weights."""
    torch.manual_seed(0)
    c_fc = torch.nn.Linear(h, ratio * h // t, dtype=dtype)
    c_proj = torch.nn.Linear(ratio * h // t, h, dtype=dtype)
    weights = {p.untyped_storage().data_ptr() for p in [*c_fc.parameters(), *c_proj.parameters()]}
    storages = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in weights:
            storages[ptr] = tensor.untyped_storage().nbytes()
        return tensor

    x = torch.randn(b, s, h, dtype=dtype, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        c_proj(torch.nn.functional.gelu(c_fc(x)))
    return sum(storages.values())


def check_mlp_activation_bytes() -> None:
    """mlp_activation_bytes(s, b, h, t, dtype_bytes, mlp_ratio) equals what autograd saves."""
    mlp_activation_bytes = _target("minimt.memory", "mlp_activation_bytes")
    cases = [(16, 2, 32, 1, torch.float32, 4), (16, 2, 32, 2, torch.float32, 4),
             (8, 3, 64, 4, torch.bfloat16, 4), (12, 1, 48, 2, torch.float32, 2)]
    for i, (s, b, h, t, dtype, ratio) in enumerate(cases):
        e = torch.finfo(dtype).bits // 8
        try:
            got = mlp_activation_bytes(s, b, h, t, e, ratio)
        except NotImplementedError as err:
            raise _not_written("08.2", err) from None
        expected = _measured_mlp_bytes(s, b, h, t, dtype, ratio)
        if got != expected:
            sbh = s * b * h * e
            hint = ("the GELU input and the c_proj input are split over t ranks; the c_fc input "
                    "is not" if got == sbh * (1 + 2 * ratio) and t > 1 else
                    "the c_fc input (s*b*h) is saved too" if got == expected - sbh else
                    "three tensors: c_fc input (s*b*h), GELU input and c_proj input "
                    "(s*b*r*h/t each), times the bytes per element")
            raise ExerciseError(f"task 08.2, case {i + 1} of {len(cases)} (s={s}, b={b}, h={h}, "
                                f"t={t}, dtype_bytes={e}, mlp_ratio={ratio}): got {got}, measured "
                                f"{expected}. Hint: {hint}")
    print(f"task 08.2: mlp_activation_bytes equals the measurement in all {len(cases)} cases")


def _layout_cases():
    """(config, num_gpus, global batch, gpu_bytes, options) of the checker's cases."""
    from ..config import GPTConfig
    mt_nlg = GPTConfig.from_preset("mt-nlg-530b")
    small = GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=2048)
    return [(mt_nlg, 2240, 1920, 80 * 2**30, {}),
            (mt_nlg, 2240, 1920, 40 * 2**30, {"zero": True}),
            (mt_nlg, 1120, 960, 80 * 2**30, {"sequence_parallel": True, "recompute": "selective"}),
            (small, 16, 64, 16 * 2**30, {"recompute": "none"}),
            (mt_nlg, 8, 1920, 80 * 2**30, {}),
            (small, 64, 256, 8 * 2**30, {"recompute": "full"})]


# Per case: (the least bubble of a layout that fits, sha256 of repr((tp, pp, dp)) of the best
# layout, first 16 hex digits), or None when nothing fits. Computed by a search over every layout
# with minimt.scale.estimate (tests/test_course_checkers.py recomputes it); hashed so that the
# student copy carries no answer.
EXPECTED_LAYOUTS = [(0.14166666666666666, "87d38edc69a645bf"),
                    (0.14166666666666666, "87d38edc69a645bf"),
                    (0.14166666666666666, "911aab28a7d86700"),
                    (0.0, "f8021f653f0a6a87"),
                    None,
                    (0.0, "e27e43ba59096022")]


def layout_digest(layout: tuple[int, int, int]) -> str:
    """The first 16 hex digits of sha256(repr((tp, pp, dp)))."""
    import hashlib
    return hashlib.sha256(repr(tuple(int(n) for n in layout)).encode()).hexdigest()[:16]


def check_best_layout() -> None:
    """best_layout picks, among the layouts that divide and fit, the one with the least bubble:
    its answer must divide the GPUs, the model and the batch and fit (minimt.scale.estimate), and
    equal the expected best layout (known only by its hash and its bubble)."""
    from ..scale import estimate, layout_error

    best_layout = _target("minimt.scale", "best_layout")
    cases = _layout_cases()
    for i, ((config, gpus, batch, gpu_bytes, options), expected) in enumerate(
            zip(cases, EXPECTED_LAYOUTS)):
        name = (f"task 08.3, case {i + 1} of {len(cases)} ({config.n_layer} layers, {gpus} GPUs, "
                f"batch {batch}, {gpu_bytes / 2**30:.0f} GiB, {options or 'defaults'})")
        try:
            est = best_layout(config, gpus, batch, gpu_bytes=gpu_bytes, **options)
            got = (est.tp, est.pp, est.dp)
        except NotImplementedError as err:
            raise _not_written("08.3", err) from None
        except ValueError as err:
            if expected is None:
                continue
            raise ExerciseError(f"{name}: raised {err!r}, but a layout fits (its bubble is "
                                f"{expected[0]:.4g})")
        if expected is None:
            raise ExerciseError(f"{name}: returned (tp, pp, dp) = {got}, but no layout fits: "
                                f"raise ValueError")
        tp, pp, dp = got
        if tp * pp * dp != gpus or tp > 8:
            raise ExerciseError(f"{name}: got (tp, pp, dp) = {got}: tp x pp x dp must equal the "
                                f"{gpus} GPUs, with tp <= max_tp = 8 (one node)")
        problem = layout_error(config, tp, pp, dp, options.get("micro_batch_size", 1), batch,
                               options.get("sequence_parallel", False))
        if problem:
            raise ExerciseError(f"{name}: got (tp, pp, dp) = {got}, which does not divide: {problem}")
        mine = estimate(config, tp, pp, dp, 1, batch, **options)
        if not mine.fits(gpu_bytes):
            raise ExerciseError(f"{name}: got (tp, pp, dp) = {got}, which needs "
                                f"{mine.memory_bytes_per_gpu['total'] / 2**30:.1f} GiB per GPU, more "
                                f"than {gpu_bytes / 2**30:.0f}. Hint: keep only layouts whose "
                                f"estimate fits gpu_bytes")
        if layout_digest(got) != expected[1]:
            hint = (f"a layout with a smaller bubble fits: {expected[0]:.4g} against your "
                    f"{mine.bubble:.4g}; search every tp <= max_tp and pp with tp x pp x dp = GPUs"
                    if mine.bubble > expected[0] + 1e-12 else
                    "the bubble ties: take the least model parallelism tp x pp, then the smaller tp")
            raise ExerciseError(f"{name}: got (tp, pp, dp) = {got}, not the best layout. Hint: {hint}")
    print(f"task 08.3: best_layout picks the right layout in all {len(cases)} cases")


TASKS = [
    Task("08.1", 2, "write SavedTensorBytes.pack: count each saved storage once",
         "minimt.memory:SavedTensorBytes.pack", "notebook 08, section 2", check_saved_tensor_bytes),
    Task("08.2", 2, "write mlp_activation_bytes: the bytes the MLP saves on one tp rank",
         "minimt.memory:mlp_activation_bytes", "notebook 08, section 2",
         check_mlp_activation_bytes),
    Task("08.3", 3, "write best_layout: the layout that fits with the least bubble",
         "minimt.scale:best_layout", "notebook 08, section 6", check_best_layout),
]
