# course: instructor only (wrong and right answers to the tasks; left out of student copies)
"""Each task's checker rejects the wrong answers a new learner writes with a message that names
the case and the likely mistake (so a check can never be a no-op). The wrong answer is swapped
into the package with monkeypatch; ranks are forked afterwards, so they see it too."""

import pytest
import torch
import torch.nn.functional as F

import minimt.course
from minimt import attention, precision, sampling
from minimt.exercises import ExerciseError, all_tasks
from minimt.parallel import comm, mappings, pipeline, tensor

TASKS = all_tasks()


def column_with_g(self, x):  # g where f belongs
    y = F.linear(mappings.reduce_from_tensor_model_parallel_region(x, self.ctx), self.weight, self.bias)
    return mappings.gather_from_tensor_model_parallel_region(y, self.ctx) if self.gather_output else y


def column_without_gather(self, x):  # gather_output ignored
    return F.linear(mappings.copy_to_tensor_model_parallel_region(x, self.ctx), self.weight, self.bias)


def column_transposed(self, x):  # a wrong shape
    return column_without_gather(self, x).transpose(0, 1)


def row_bias_before_g(self, x):
    if not self.input_is_parallel:
        x = mappings.scatter_to_tensor_model_parallel_region(x, self.ctx)
    return mappings.reduce_from_tensor_model_parallel_region(F.linear(x, self.weight, self.bias), self.ctx)


def row_without_g(self, x):  # the partial product returned: no all-reduce
    if not self.input_is_parallel:
        x = mappings.scatter_to_tensor_model_parallel_region(x, self.ctx)
    return F.linear(x, self.weight) + self.bias


def row_without_scatter(self, x):
    y = mappings.reduce_from_tensor_model_parallel_region(F.linear(x, self.weight), self.ctx)
    return y + self.bias


def unscaled_attention(q, k, v, mask=None, causal=False, dropout_p=0.0, return_weights=False):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1)
    return (weights @ v, weights) if return_weights else weights @ v


def gpipe_order(kind, num_stages, num_microbatches, num_chunks=1):
    return [[pipeline.Action("F", i) for i in range(num_microbatches)] +
            [pipeline.Action("B", i) for i in range(num_microbatches)] for _ in range(num_stages)]


def scaler_never_grows(self, found_inf):
    if found_inf:
        self.scale *= self.backoff_factor
    self.growth_tracker = 0 if found_inf else self.growth_tracker + 1


def top_p_without_crossing_token(logits, p):
    probs = logits.softmax(-1)
    sorted_probs, order = probs.sort(-1, descending=True)
    drop = sorted_probs.cumsum(-1) > p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


WRONG = [
    ("03.3", tensor.ColumnParallelLinear, "forward", column_with_g, "g instead of f"),
    ("03.3", tensor.ColumnParallelLinear, "forward", column_without_gather,
     r"gather_output=True, .*output: shape \(2, 4, 6\), expected \(2, 4, 12\). Hint: gather_output=True"),
    ("03.3", tensor.ColumnParallelLinear, "forward", column_transposed,
     r"output: shape \(4, 2, 6\), expected \(2, 4, 6\)"),
    ("03.4", tensor.RowParallelLinear, "forward", row_bias_before_g, "the bias is counted 2 times"),
    ("03.4", tensor.RowParallelLinear, "forward", row_without_g,
     r"rank 0 of 2, input_is_parallel=True, x \(2, 4, 6\) -> 8: output differs from nn.Linear's .*"
     r"at index \(\d+, \d+, \d+\): got -?\d.*, expected -?\d.*Hint: .*partial sum: all-reduce it with g"),
    ("03.4", tensor.RowParallelLinear, "forward", row_without_scatter,
     "input_is_parallel=False.*scatter_to_tensor_model_parallel_region"),
    ("01.1", attention, "scaled_dot_product_attention", unscaled_attention, "no 1/sqrt"),
    ("04.1", pipeline, "pipeline_schedule", gpipe_order, r"ranks hold \[8, 8, 8, 8\].*1F1B holds"),
    ("05.2", precision.DynamicLossScaler, "update", scaler_never_grows, "grow only when the tracker"),
    ("06.4", sampling, "top_p_filter", top_p_without_crossing_token, "keep the token that makes"),
]


@pytest.mark.parametrize("task_id, owner, name, wrong, message", WRONG,
                         ids=[f"{w[0]}-{w[3].__name__}" for w in WRONG])
def test_a_wrong_answer_gets_a_message_that_names_the_mistake(monkeypatch, task_id, owner, name,
                                                             wrong, message):
    monkeypatch.setattr(owner, name, wrong)
    with pytest.raises(ExerciseError, match=message) as caught:
        minimt.course.check(task_id)
    assert f"task {task_id}" in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_f_swapped_for_g_is_named(monkeypatch):
    class Swapped(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, pctx):
            return comm.all_reduce(x.clone(), pctx, "tp", phase="forward")

        @staticmethod
        def backward(ctx, grad):
            return grad, None
    monkeypatch.setattr(mappings, "_CopyToTensorModelParallelRegion", Swapped)
    with pytest.raises(ExerciseError, match="summing over ranks is g's forward"):
        minimt.course.check("03.1")


def test_an_unwritten_task_says_what_to_write_and_where(monkeypatch):
    def stub(*args, **kwargs):
        raise NotImplementedError("task 06.3: write top_k_filter; see notebook 06, section 5")
    monkeypatch.setattr(sampling, "top_k_filter", stub)
    with pytest.raises(ExerciseError, match=r"task 06.3 not written yet: write top_k_filter in "
                                            r"minimt/sampling.py \(between ### BEGIN SOLUTION"):
        minimt.course.check("06.3")


@pytest.mark.parametrize("task_id", ["07.1", "08.1"])
def test_every_unwritten_task_says_it_the_same_way(monkeypatch, task_id):
    """Also where the stub runs on a rank (07.1) or inside a hook (08.1)."""
    import importlib
    task = next(t for t in TASKS if t.id == task_id)
    module, _, qualname = task.target.partition(":")
    owner, name = importlib.import_module(module), qualname
    if "." in qualname:
        cls, name = qualname.split(".")
        owner = getattr(owner, cls)

    def stub(*args, **kwargs):
        raise NotImplementedError(f"task {task_id}: {task.statement}; see {task.section}")
    monkeypatch.setattr(owner, name, stub)
    with pytest.raises(ExerciseError) as caught:
        minimt.course.check(task_id)
    assert str(caught.value) == (f"task {task_id} not written yet: {task.statement} in "
                                 f"{module.replace('.', '/')}.py (between ### BEGIN SOLUTION and "
                                 f"### END SOLUTION); see {task.section}")


def test_an_exception_in_the_learners_code_names_the_line_not_the_checker(monkeypatch):
    def broken(logits, k):
        return logits.topk(k, dim=2)  # no dim 2 in (B, V)
    monkeypatch.setattr(sampling, "top_k_filter", broken)
    with pytest.raises(ExerciseError, match=r"task 06.3: your code raised (IndexError|RuntimeError)"):
        minimt.course.check("06.3")


def test_the_expected_best_layouts_equal_a_search_over_every_layout():
    """08.3's checker carries each case's best layout as a hash and its bubble only: recompute
    them by trying every tp <= 8 and pp with minimt.scale.estimate (the oracle the copy lacks)."""
    from minimt.exercises.memory import EXPECTED_LAYOUTS, _layout_cases, layout_digest
    from minimt.scale import estimate
    for (config, gpus, batch, gpu_bytes, options), expected in zip(_layout_cases(),
                                                                    EXPECTED_LAYOUTS):
        found = []
        for tp in range(1, 9):
            for pp in range(1, gpus + 1):
                dp, rest = divmod(gpus, tp * pp)
                if rest:
                    continue
                try:
                    est = estimate(config, tp, pp, dp, 1, batch, **options)
                except ValueError:  # does not divide the model or the batch
                    continue
                if est.memory_bytes_per_gpu["total"] <= gpu_bytes:
                    found.append(((est.bubble, tp * pp, tp), (tp, pp, dp)))
        best = min(found) if found else None
        assert (None if best is None else (best[0][0], layout_digest(best[1]))) == expected
