# course: instructor only (model answers to the exercises; left out of student copies)
"""The tasks of notebook 07: each check passes on the package, says "not written yet" for a stub,
and names the mistake for a typical wrong answer."""
import pytest

from minimt.exercises import ExerciseError, all_tasks
from minimt.exercises.data_parallel import TASKS
from minimt.parallel import data_parallel, ring, zero


def check(task_id):
    next(t for t in TASKS if t.id == task_id).check()


def test_tasks_are_collected():
    assert [t.id for t in all_tasks() if t.id.startswith("07.")] == ["07.1", "07.2", "07.3", "07.4"]


@pytest.mark.parametrize("task_id", ["07.1", "07.2", "07.3"])
def test_the_package_passes(task_id, capsys):
    check(task_id)
    assert f"task {task_id}:" in capsys.readouterr().out


def _stub(*args, **kwargs):
    raise NotImplementedError("task 07.x: see notebook 07")


@pytest.mark.parametrize("task_id,owner,name", [
    ("07.1", ring, "ring_reduce_scatter"),
    ("07.2", data_parallel.DistributedDataParallel, "_on_grad_ready"),
    ("07.3", zero.DistributedOptimizer, "step")])
def test_a_stub_says_what_to_write(task_id, owner, name, monkeypatch):
    monkeypatch.setattr(owner, name, _stub)
    with pytest.raises(ExerciseError, match=f"task {task_id} not written yet"):
        check(task_id)


def test_ring_hint_for_an_unreduced_chunk(monkeypatch):
    monkeypatch.setattr(ring, "ring_reduce_scatter",
                        lambda x, ctx, group="dp": x.chunk(ctx.size(group))[ctx.dp_rank].clone())
    with pytest.raises(ExerciseError, match="your own chunk, unreduced"):
        check("07.1")


def test_ddp_hint_when_nothing_overlaps(monkeypatch):
    def late(self, param):  # correct gradients, but every bucket waits for the end of backward
        if not self._finish_queued:
            import torch
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self._finish_queued = True
        self.timeline["ready"].append(__import__("time").perf_counter())
    monkeypatch.setattr(data_parallel.DistributedDataParallel, "_on_grad_ready", late)
    with pytest.raises(ExerciseError, match="no overlap"):
        check("07.2")


def test_zero_hint_for_an_all_reduce(monkeypatch):
    from minimt.parallel.comm import all_reduce

    def all_reduce_step(self):
        flat = all_reduce(self.flat_grads(), self.ctx, "dp").div_(self.ctx.dp_size)
        self.adamw_update(flat[self.shard_start:self.shard_start + self.shard_size])
    monkeypatch.setattr(zero.DistributedOptimizer, "step", all_reduce_step)
    with pytest.raises(ExerciseError, match="one reduce-scatter"):
        check("07.3")


def model_ddp_group_bytes(config, tp, dp, batch_size):
    from minimt.parallel import stage_numel
    b, T, C, L = batch_size // dp, config.block_size, config.n_embd, config.n_layer
    tp_numel = (4 * L + 2) * b * T * C + 3 * b * T
    return {"tp": 4 * tp_numel * (tp > 1), "dp": 4 * stage_numel(config, tp, 1, 0) * (dp > 1)}


def test_ddp_group_bytes_exercise_accepts_the_closed_form_and_explains_a_miss(capsys):
    from minimt.exercises.data_parallel import check_ddp_group_bytes
    check_ddp_group_bytes(model_ddp_group_bytes)
    assert "all 4 layouts" in capsys.readouterr().out

    def zero_accounting(config, tp, dp, batch_size):  # ZeRO-1's bytes, not DDP's
        got = model_ddp_group_bytes(config, tp, dp, batch_size)
        return {"tp": got["tp"], "dp": 2 * got["dp"]}
    with pytest.raises(ExerciseError, match="no padding and no all-gather"):
        check_ddp_group_bytes(zero_accounting)
