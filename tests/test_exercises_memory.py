# course: instructor only (model answers to the exercises; left out of student copies)
"""Tasks of notebook 08: each check passes with the package's solution, names a learner's
likely mistake, and turns an unwritten stub into a clear ExerciseError."""
import pytest

import minimt.memory
import minimt.scale
from minimt.exercises import ExerciseError, all_tasks
from minimt.exercises.memory import TASKS


def test_tasks_are_registered():
    assert [t.id for t in TASKS] == ["08.1", "08.2", "08.3"]
    assert {"08.1", "08.2", "08.3"} <= {t.id for t in all_tasks()}


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.id)
def test_solution_passes(task, capsys):
    task.check()
    assert f"task {task.id}" in capsys.readouterr().out


def _stub(*args, **kwargs):
    raise NotImplementedError("task: write it")


def test_unwritten_tasks_say_so(monkeypatch):
    monkeypatch.setattr(minimt.memory.SavedTensorBytes, "pack", _stub)
    monkeypatch.setattr(minimt.memory, "mlp_activation_bytes", _stub)
    monkeypatch.setattr(minimt.scale, "best_layout", _stub)
    for task in TASKS:
        with pytest.raises(ExerciseError, match=f"task {task.id} not written yet"):
            task.check()


def test_counting_views_twice_is_caught(monkeypatch):
    def pack_by_tensor(self, tensor):  # a storage counted once per saved view
        self.storages[id(tensor)] = (tuple(tensor.shape), tensor.dtype,
                                     tensor.untyped_storage().nbytes())
        return tensor
    monkeypatch.setattr(minimt.memory.SavedTensorBytes, "pack", pack_by_tensor)
    with pytest.raises(ExerciseError, match="case 3 of 5.*views of one storage"):
        TASKS[0].check()


def test_forgetting_the_tensor_parallel_split_is_caught(monkeypatch):
    monkeypatch.setattr(minimt.memory, "mlp_activation_bytes",
                        lambda s, b, h, t=1, e=4, r=4: s * b * h * e * (1 + 2 * r))
    with pytest.raises(ExerciseError, match="case 2 of 4 .*t=2.*split over t ranks"):
        TASKS[1].check()


def test_a_layout_that_does_not_fit_is_caught(monkeypatch):
    def data_parallel_only(config, num_gpus, global_batch_size, gpu_bytes=0, **options):
        return minimt.scale.estimate(config, 1, 1, num_gpus, 1, global_batch_size, **options)
    monkeypatch.setattr(minimt.scale, "best_layout", data_parallel_only)
    with pytest.raises(ExerciseError, match="task 08.3, case 1 of 6"):
        TASKS[2].check()
