# course: instructor only (model answers to the exercises; left out of student copies)
"""Tasks of notebook 09: each check passes with the package's solution, the digests it falls back
on equal its oracles' outputs, and without the oracles a wrong answer still fails."""
import numpy as np
import pytest

import minimt.blending
import minimt.curation
import minimt.recipe
from minimt.exercises import ExerciseError, all_tasks
from minimt.exercises import data_recipe
from minimt.exercises.data_recipe import TASKS
from helpers import oracle



def test_tasks_are_registered():
    assert [t.id for t in TASKS] == ["09.1", "09.2", "09.3"]
    assert {"09.1", "09.2", "09.3"} <= {t.id for t in all_tasks()}


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.id)
def test_solution_passes(task, capsys):
    task.check()
    assert f"task {task.id}" in capsys.readouterr().out


def test_recorded_digests_are_the_oracles_outputs():
    oracle("megatron.core")
    oracle("datasketch")
    for weights, n, recorded in data_recipe.BLEND_CASES:
        assert data_recipe.digest(*data_recipe.megatron_blend(weights, n)) == recorded
    for k, n, seed, recorded in data_recipe.SIGNATURE_CASES:
        case = data_recipe._signature_case(k, n, seed)
        assert data_recipe.digest(data_recipe.datasketch_signature(*case)) == recorded
    for start, inc, samples, final, consumed, recorded in data_recipe.RAMP_CASES:
        assert data_recipe.digest(data_recipe.megatron_ramp(start, inc, samples, final,
                                                            consumed)) == recorded


WRONG = {"09.1": (minimt.blending, "blending_indices",  # the right counts in reverse order
                  lambda original: lambda w, n: tuple(a[::-1].copy() for a in original(w, n))),
         "09.2": (minimt.curation, "minhash_signature",
                  lambda original: lambda h, a, b: original(h, a, b) + np.uint64(1)),
         "09.3": (minimt.recipe, "rampup_global_batch_size",
                  lambda original: lambda c, s, i, r, g: original(c + 1, s, i, r, g))}


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.id)
def test_without_the_oracles_the_digests_decide(task, monkeypatch, capsys):
    for name in ("megatron_blend", "datasketch_signature", "megatron_ramp"):
        monkeypatch.setattr(data_recipe, name, lambda *args: None)
    task.check()
    module, name, make_wrong = WRONG[task.id]
    monkeypatch.setattr(module, name, make_wrong(getattr(module, name)))
    with pytest.raises(ExerciseError, match="sha256"):
        task.check()


def _stub(*args, **kwargs):
    raise NotImplementedError("task: write it")


def test_unwritten_tasks_say_so(monkeypatch):
    monkeypatch.setattr(minimt.blending, "blending_indices", _stub)
    monkeypatch.setattr(minimt.curation, "minhash_signature", _stub)
    monkeypatch.setattr(minimt.recipe, "rampup_global_batch_size", _stub)
    for task in TASKS:
        with pytest.raises(ExerciseError, match=f"task {task.id} not written yet"):
            task.check()
