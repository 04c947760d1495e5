"""Tasks 03.5 and 03.6 of 03_tensor_parallel: the vocab-parallel cross entropy's forward and
backward, run on 2 gloo processes against F.cross_entropy on the gathered logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import ExerciseError, shape_first, task
from .tensor_parallel_tasks import TP, _close, _on_ranks


def _ce_cases():
    """(logits (B, T, V), targets (B, T)): plain, with an ignored token, with huge logits."""
    g = torch.Generator().manual_seed(0)
    plain = (torch.randn(2, 3, 10, generator=g), torch.randint(10, (2, 3), generator=g))
    ignored = (torch.randn(1, 4, 6, generator=g) * 3, torch.tensor([[0, -100, 5, 3]]))
    huge = (torch.randn(2, 2, 8, generator=g) + 1000.0, torch.tensor([[0, 7], [3, 4]]))
    return [plain, ignored, huge]


def _ce_rank(ctx):
    """The learner's vocab-parallel loss on one rank, per token and mean, with its gradient."""
    from ..parallel.cross_entropy import _VocabParallelCrossEntropy, vocab_parallel_cross_entropy
    out = []
    for logits, targets in _ce_cases():
        width = logits.shape[-1] // ctx.tp_size
        shard = logits[..., ctx.tp_rank * width:(ctx.tp_rank + 1) * width].clone()
        per_token = _VocabParallelCrossEntropy.apply(shard, targets.clamp(min=0), ctx)
        local = torch.logsumexp(shard, -1) - shard.gather(                # what one rank alone sees
            -1, (targets.clamp(min=0) - ctx.tp_rank * width).clamp(0, width - 1)[..., None])[..., 0]
        shard.requires_grad_()
        loss = vocab_parallel_cross_entropy(shard, targets, ctx)
        r = {"per token": per_token.detach(), "local": local, "loss": loss.detach(), "grad": None}
        upstream = 0.7                                                   # dL/dloss, not 1
        try:
            (loss * upstream).backward()
            r["grad"] = shard.grad
        except NotImplementedError as err:
            r["backward missing"] = str(err)
        full = logits.clone().requires_grad_()
        expected = F.cross_entropy(full.flatten(0, 1), targets.flatten(), ignore_index=-100)
        (expected * upstream).backward()
        r.update({"expected per token": F.cross_entropy(logits.flatten(0, 1),
                  targets.clamp(min=0).flatten(), reduction="none").view(targets.shape),
                  "expected loss": expected.detach(),
                  "expected grad": full.grad[..., ctx.tp_rank * width:(ctx.tp_rank + 1) * width],
                  "softmax": logits.softmax(-1)[..., ctx.tp_rank * width:(ctx.tp_rank + 1) * width]})
        keep = (targets != -100).float()
        per_token = (upstream * keep / keep.sum())[..., None]                 # (B, T, 1)
        index = targets.clamp(min=0) - ctx.tp_rank * width                    # (B, T)
        mine = ((index >= 0) & (index < width)).float()[..., None]
        one_hot = F.one_hot(index.clamp(0, width - 1), width).float()        # (B, T, V/tp)
        r["variants"] = {"softmax alone": r["softmax"] * per_token,
                         "one-hot everywhere": (r["softmax"] - one_hot) * per_token,
                         "no grad_loss": r["softmax"] - one_hot * mine}
        out.append(r)
    return out


def _check_ce_forward_task() -> None:
    """The forward of _VocabParallelCrossEntropy on 2 ranks: each token's loss equals
    F.cross_entropy on the gathered logits, also for logits near 1000 (no overflow)."""
    results = _on_ranks("03.5", _ce_rank)
    for case in range(len(_ce_cases())):
        for rank, by_case in enumerate(results):
            r = by_case[case]
            expected = r["expected per token"]
            name = (f"task 03.5, case {case + 1} of {len(_ce_cases())} (logits "
                    f"{tuple(expected.shape) + (r['softmax'].shape[-1] * TP,)} split over {TP} "
                    f"ranks), rank {rank}: per-token loss")
            shape_first(name, r["per token"], tuple(expected.shape), "one loss per token: (B, T)")
            if not _close(r["per token"], expected, atol=1e-4):
                got = r["per token"]
                hint = ("exp overflowed: subtract the max over the WHOLE vocabulary (all-reduce "
                        "with op=MAX) before exp" if not torch.isfinite(got).all() else
                        "this is the loss over this rank's slice alone: the max, the target's "
                        "logit and the sum of exponentials must each be all-reduced over tp"
                        if _close(got, r["local"], atol=1e-4) else
                        "loss = log(sum_j exp z_j) - z_target, with z shifted by the global max")
                raise ExerciseError(f"{name} differs from F.cross_entropy on the gathered logits: "
                                    f"got {got.flatten()[:4].tolist()}, expected "
                                    f"{expected.flatten()[:4].tolist()}. Hint: {hint}")
    print(f"task 03.5: the vocab-parallel loss equals F.cross_entropy on the gathered logits in "
          f"{len(_ce_cases())} cases on {TP} ranks, logits near 1000 included")


def _check_ce_backward_task() -> None:
    """The backward of _VocabParallelCrossEntropy on 2 ranks: each rank's slice of dL/dlogits
    equals autograd's through F.cross_entropy on the gathered logits (mean, ignore_index, dL/dloss)."""
    results = _on_ranks("03.6", _ce_rank)
    for case in range(len(_ce_cases())):
        for rank, by_case in enumerate(results):
            r = by_case[case]
            if "backward missing" in r:
                raise NotImplementedError(r["backward missing"])
            if not _close(r["loss"], r["expected loss"], atol=1e-4):
                raise ExerciseError("task 03.6 needs task 03.5 first: the forward's loss differs "
                                    "from F.cross_entropy (run minimt.course.check('03.5'))")
            name = (f"task 03.6, case {case + 1} of {len(_ce_cases())}, rank {rank}: "
                    f"dL/dlogits of this rank's slice {tuple(r['expected grad'].shape)}")
            got, expected = r["grad"], r["expected grad"]
            if got is None:
                raise ExerciseError(f"{name}: no gradient reached the logits")
            shape_first(name, got, tuple(expected.shape), "one gradient per logit of this slice")
            if not _close(got, expected, atol=1e-5):
                advice = {"softmax alone": "the softmax alone: subtract 1 at the target's position",
                          "one-hot everywhere": "every rank subtracted 1: only the rank whose slice "
                          "holds the target does (the others' target is outside their slice)",
                          "no grad_loss": "multiply by grad_loss, the upstream gradient of each "
                          "token's loss"}
                hint = next((advice[k] for k, wrong in r["variants"].items() if _close(got, wrong)),
                            "dloss/dz_j = softmax_j - [j == target], times grad_loss")
                raise ExerciseError(f"{name} differs from autograd through F.cross_entropy "
                                    f"(largest error {(got - expected).abs().max().item():.3g}). "
                                    f"Hint: {hint}")
    print(f"task 03.6: the vocab-parallel gradient equals autograd through F.cross_entropy in "
          f"{len(_ce_cases())} cases on {TP} ranks")


TASKS = [
    task("03.5", 3, "write the forward of _VocabParallelCrossEntropy (max, target logit, sum of exp)",
         "minimt.parallel.cross_entropy:_VocabParallelCrossEntropy.forward", "notebook 03, section 4",
         _check_ce_forward_task),
    task("03.6", 2, "write the backward of _VocabParallelCrossEntropy (softmax minus one-hot)",
         "minimt.parallel.cross_entropy:_VocabParallelCrossEntropy.backward", "notebook 03, section 4",
         _check_ce_backward_task),
]
