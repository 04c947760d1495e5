"""Tasks of 09_data_and_recipe: Megatron's blending rule, a MinHash signature, and the batch-size
ramp. The oracles are megatron-core (build_blending_indices, RampupBatchsizeNumMicroBatchesCalculator)
and datasketch (MinHash with the same hash functions). Where an oracle is not installed (megatron-core
has Linux wheels only), the check compares with sha256 digests of the oracle's own outputs, recorded
from it and re-checked against it by tests/test_exercises_data_recipe.py: a digest says right or
wrong without showing an answer."""
from __future__ import annotations

import hashlib
import importlib

import numpy as np

from .core import ExerciseError, Task, unfinished

MT_NLG_WEIGHTS = [0.14336, 0.08962, 0.19336, 0.05689, 0.00859, 0.02897, 0.04771, 0.00873, 0.01007,
                  0.00208, 0.13017, 0.09446, 0.15652, 0.01359, 0.01588]


def _target(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def _not_written(task_id: str, err: NotImplementedError) -> ExerciseError:
    task = next(t for t in TASKS if t.id == task_id)
    return unfinished(task.id, task.statement, task.target, task.section, str(err))


def digest(*arrays) -> str:
    """sha256 (first 16 hex digits) of the arrays' int64 values: compares without revealing."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a, dtype=np.int64)).tobytes())
    return h.hexdigest()[:16]


# ---- 09.1 blending --------------------------------------------------------------------------

BLEND_CASES = [  # (weights, num_samples, sha256 of megatron-core's two arrays)
    ([0.5, 0.25, 0.25], 4, "11454f9bab73e0bb"), ([0.2, 0.8], 10, "1e00e38e868ca33e"),
    ([0.5, 0.3, 0.2], 200, "c3fc3a7bd3dfa068"), ([1.0, 1.0, 1.0], 31, "edf9473dd8aaaf84"),
    (MT_NLG_WEIGHTS, 1920, "a916138c28919c5b")]


def megatron_blend(weights, n):
    """megatron-core's build_blending_indices on the normalised weights, or None if absent."""
    try:
        from megatron.core.datasets import helpers
    except ImportError:
        return None
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    dataset_index, dataset_sample_index = np.zeros(n, np.int16), np.zeros(n, np.int64)
    helpers.build_blending_indices(dataset_index, dataset_sample_index, w, len(w), n, False)
    return dataset_index, dataset_sample_index


def _blend_hint(got_d, got_s, want_d, want_s, weights) -> str:
    i = int(np.argmax((got_d != want_d) | (got_s != want_s)))
    where = (f"sample {i}: expected dataset {want_d[i]} (its sample {want_s[i]}), got dataset "
             f"{got_d[i]} (its sample {got_s[i]})")
    if (got_d == want_d).all():
        return where + ". Hint: dataset_sample_index[i] counts the samples drawn from that dataset " \
                       "before step i (0, 1, 2, ... per dataset)"
    if i == 0:
        return where + ". Hint: at step 0 the errors use max(i, 1) = 1, so the largest weight wins"
    return where + (". Hint: pick the largest error w_d * max(i, 1) - n_d, the first dataset on a "
                    "tie, then add one to n_d")


def check_blending_indices() -> None:
    """blending_indices matches megatron-core's build_blending_indices, sample for sample."""
    blending_indices = _target("minimt.blending", "blending_indices")
    for k, (weights, n, recorded) in enumerate(BLEND_CASES):
        name = f"task 09.1, case {k + 1} of {len(BLEND_CASES)} (weights {weights[:4]}" \
               f"{'...' if len(weights) > 4 else ''}, {n} samples)"
        try:
            got = blending_indices(weights, n)
        except NotImplementedError as err:
            raise _not_written("09.1", err) from None
        if not (isinstance(got, tuple) and len(got) == 2
                and all(isinstance(a, np.ndarray) and a.shape == (n,) for a in got)):
            raise ExerciseError(f"{name}: expected a tuple of two numpy arrays of shape ({n},)")
        if (got[0].dtype, got[1].dtype) != (np.int16, np.int64):
            raise ExerciseError(f"{name}: dtypes {got[0].dtype}, {got[1].dtype}; expected int16, "
                                "int64 (megatron-core's)")
        want = megatron_blend(weights, n)
        if want is not None:
            if not all((a == b).all() for a, b in zip(got, want)):
                raise ExerciseError(f"{name}: differs from megatron-core at "
                                    + _blend_hint(*got, *want, weights))
        elif digest(*got) != recorded:
            raise ExerciseError(f"{name}: differs from megatron-core's output (compared by its "
                                "sha256; install megatron-core on Linux to see where)")
    print(f"task 09.1: blending_indices equals megatron-core on all {len(BLEND_CASES)} cases")


# ---- 09.2 MinHash signature -------------------------------------------------------------------

SIGNATURE_CASES = [(16, 5, 1, "ab0dc6ea4616fc3a"), (64, 40, 2, "0c4b1556ba412349"),
                   (100, 400, 3, "6fec2f744454c68c")]  # (k, n, seed, sha256 of datasketch's)


def _signature_case(k, n, seed):
    rng = np.random.default_rng(100 + seed)
    hashes = rng.integers(0, 1 << 32, size=n, dtype=np.uint64)                 # (n,) 32-bit
    a = rng.integers(1, 1 << 31, size=k, dtype=np.uint64)
    b = rng.integers(0, 1 << 31, size=k, dtype=np.uint64)
    return hashes, a, b


def datasketch_signature(hashes, a, b):
    """datasketch's MinHash ("legacy" scheme) fed the same 32-bit hashes, or None if absent."""
    try:
        import datasketch
    except ImportError:
        return None
    sketch = datasketch.MinHash(num_perm=len(a), permutations=(a, b), scheme="legacy",
                                hashfunc=lambda data: int.from_bytes(data, "little"))
    sketch.update_batch([int(h).to_bytes(4, "little") for h in hashes])
    return sketch.hashvalues


def check_minhash_signature() -> None:
    """minhash_signature equals datasketch's MinHash with the same hash functions."""
    minhash_signature = _target("minimt.curation", "minhash_signature")
    for i, (k, n, seed, recorded) in enumerate(SIGNATURE_CASES):
        hashes, a, b = _signature_case(k, n, seed)
        name = f"task 09.2, case {i + 1} of {len(SIGNATURE_CASES)} ({n} shingles, k={k})"
        try:
            got = minhash_signature(hashes.copy(), a.copy(), b.copy())
        except NotImplementedError as err:
            raise _not_written("09.2", err) from None
        got = np.asarray(got)
        if got.shape != (k,):
            raise ExerciseError(f"{name}: shape {got.shape}, expected ({k},): one minimum per hash "
                                "function (reduce over the shingles, axis 1 of a (k, n) table)")
        want = datasketch_signature(hashes, a, b)
        if want is None:
            if digest(got) != recorded:
                raise ExerciseError(f"{name}: differs from datasketch's MinHash (compared by sha256;"
                                    " pip install datasketch to see where)")
            continue
        if not (got.astype(np.uint64) == want).all():
            j = int(np.argmax(got.astype(np.uint64) != want))
            hint = ("values above 2^32: keep the low 32 bits, & (2^32 - 1)" if got.max() > 2**32
                    else "each entry is the minimum over the shingles of ((a x + b) mod p) & "
                    "(2^32 - 1), with p = 2^61 - 1")
            raise ExerciseError(f"{name}: entry {j} is {int(got[j])}, expected {int(want[j])}. "
                                f"Hint: {hint}")
    print(f"task 09.2: minhash_signature equals datasketch on all {len(SIGNATURE_CASES)} cases")


# ---- 09.3 batch-size ramp-up ---------------------------------------------------------------------

RAMP_CASES = [  # (start, increment, rampup_samples, global batch, consumed counts, sha)
    (2, 2, 9, 16, range(0, 14), "a6a4f4a213017fbb"),  # 9 / (9 / 7) = 6.99..: 14 at 9, not 16
    (4, 4, 40, 16, range(0, 60), "40a705ebcd08c8dd"), (3, 6, 100, 21, range(0, 130), "634aad469c023b0c"),
    (32, 32, 5_859_375, 1920, [0, 1, 99_311, 99_312, 198_623, 2_000_000, 5_760_063, 5_760_064,
                               5_859_374, 5_859_375, 5_859_376, 10**9], "25d1e5ce86d99db8")]


def megatron_ramp(start, increment, samples, global_batch, consumed):
    """megatron-core's RampupBatchsizeNumMicroBatchesCalculator at each count, or None."""
    try:
        from megatron.core.num_microbatches_calculator import (
            RampupBatchsizeNumMicroBatchesCalculator as Calculator)
    except ImportError:
        return None
    calculator = Calculator(global_batch, 1, 1, False, 0, start, increment, samples)
    sizes = []
    for c in consumed:
        calculator.update(c, consistency_check=False)
        sizes.append(calculator.get_current_global_batch_size())
    return sizes


def check_rampup_global_batch_size() -> None:
    """rampup_global_batch_size equals megatron-core's ramp-up calculator at every count."""
    ramp = _target("minimt.recipe", "rampup_global_batch_size")
    for i, (start, inc, samples, final, consumed, recorded) in enumerate(RAMP_CASES):
        name = (f"task 09.3, case {i + 1} of {len(RAMP_CASES)} (--rampup-batch-size {start} {inc} "
                f"{samples}, global batch {final})")
        try:
            got = [ramp(c, start, inc, samples, final) for c in consumed]
        except NotImplementedError as err:
            raise _not_written("09.3", err) from None
        want = megatron_ramp(start, inc, samples, final, consumed)
        if want is None:
            if digest(got) != recorded:
                raise ExerciseError(f"{name}: differs from megatron-core's calculator (compared by "
                                    "sha256; install megatron-core on Linux to see where)")
            continue
        for c, g, w in zip(consumed, got, want):
            if g != w:
                hint = ("the final batch starts once consumed_samples > rampup_samples (strictly)"
                        if c == samples and g == final else
                        "samples per increment is rampup_samples / num_increments in floating "
                        "point, num_increments = (global_batch_size - start) // increment, and "
                        "steps = int(consumed_samples / that)")
                raise ExerciseError(f"{name}: after {c} consumed samples got {g}, expected {w}. "
                                    f"Hint: {hint}")
    print(f"task 09.3: rampup_global_batch_size equals megatron-core on all {len(RAMP_CASES)} cases")


TASKS = [
    Task("09.1", 3, "write blending_indices: Megatron's rule for drawing a blend sample by sample",
         "minimt.blending:blending_indices", "notebook 09, section 2", check_blending_indices),
    Task("09.2", 2, "write minhash_signature: the MinHash signature of one shingle set",
         "minimt.curation:minhash_signature", "notebook 09, section 3", check_minhash_signature),
    Task("09.3", 3, "write rampup_global_batch_size: Megatron's batch-size ramp-up",
         "minimt.recipe:rampup_global_batch_size", "notebook 09, section 5",
         check_rampup_global_batch_size),
]
