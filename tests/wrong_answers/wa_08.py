# course: instructor only -- wrong answers for the tasks of notebook 08
"""Plausible learner mistakes in tasks 08.1-08.3; tests/test_wrong_answers.py applies them."""

WRONG_ANSWERS = [
    dict(task="08.1", mistake="counts a storage again each time one of its views is saved",
         old="if key not in self.excluded and key not in self.storages:",
         new="if key not in self.excluded:\n            key = (key, len(self.storages))"),
    dict(task="08.1", mistake="counts the excluded parameters too",
         old="if key not in self.excluded and key not in self.storages:",
         new="if key not in self.storages:"),
    dict(task="08.1", mistake="counts the view's elements instead of the bytes of its storage",
         old="tensor.untyped_storage().nbytes())", new="tensor.numel() * tensor.element_size())"),
    dict(task="08.1", mistake="counts elements, not bytes",
         old="tensor.untyped_storage().nbytes())", new="tensor.untyped_storage().nbytes() // "
             "tensor.element_size())"),

    dict(task="08.2", mistake="forgets the c_fc input (s*b*h)",
         old="return s * b * h * dtype_bytes + 2 *", new="return 2 *", hint="c_fc input"),
    dict(task="08.2", mistake="does not split the GELU and c_proj inputs over t",
         old="(mlp_ratio * h // t)", new="(mlp_ratio * h)", hint="split over t ranks"),
    dict(task="08.2", mistake="assumes an MLP 4h wide (ignores mlp_ratio)",
         old="(mlp_ratio * h // t)", new="(4 * h // t)"),
    dict(task="08.2", mistake="splits the c_fc input over t too",
         old="return s * b * h * dtype_bytes + 2 *", new="return s * b * h // t * dtype_bytes + 2 *"),

    dict(task="08.3", mistake="never checks that the layout fits the GPU's memory",
         old="if est.fits(gpu_bytes) and (best is None", new="if (best is None",
         hint="keep only layouts whose estimate fits"),
    dict(task="08.3", mistake="breaks bubble ties by the larger tensor parallelism",
         old="key = (est.bubble, tp * pp, tp)", new="key = (est.bubble, -tp, pp)",
         hint="the bubble ties"),
    dict(task="08.3", mistake="picks the largest bubble",
         old="key = (est.bubble, tp * pp, tp)", new="key = (-est.bubble, tp * pp, tp)",
         hint="smaller bubble"),
    dict(task="08.3", mistake="searches pipeline depths up to 8 only",
         old="for pp in range(1, num_gpus // tp + 1):", new="for pp in range(1, 9):"),
    dict(task="08.3", mistake="returns the first layout that fits",
         old="if est.fits(gpu_bytes) and (best is None or key < best[0]):",
         new="if est.fits(gpu_bytes) and best is None:"),
    dict(task="08.3", mistake="ignores max_tp: tries tensor parallelism beyond one node",
         old="for tp in range(1, min(max_tp, num_gpus) + 1):", new="for tp in range(1, num_gpus + 1):"),
    dict(task="08.3", mistake="returns a layout even when nothing fits",
         old="if best is None:\n        raise ValueError(",
         new="if best is None:\n        return estimate(config, 1, 1, num_gpus, micro_batch_size, "
             "global_batch_size, **options)\n        raise ValueError(", hint="raise ValueError"),
]
