"""Shared test settings, and the course's task markers: in a student copy, the tests of a function
the learner has not written yet fail with one line naming the task (`pytest -m "task(id='03.4')"`
runs the tests of one task)."""
import re

import pytest
import torch

# The tasks (minimt.exercises.all_tasks()) whose code each test file exercises directly.
TASKS_OF_TEST_FILE = {
    "test_attention.py": ["01.1", "01.2", "06.1"],
    "test_model.py": ["02.1", "02.2"],
    "test_train.py": ["02.1", "02.3"],
    "test_comm.py": ["03.1", "03.2"],
    "test_tensor.py": ["03.1", "03.2", "03.3", "03.4", "03.5", "03.6"],
    "test_torch_tp_crosscheck.py": ["03.3", "03.4"],
    "test_pipeline.py": ["04.1"],
    "test_pipeline_runtime.py": ["04.1", "04.2"],
    "test_pipeline_viz.py": ["04.1"],
    "test_precision.py": ["05.1", "05.2"],
    "test_generate.py": ["06.1", "06.2", "06.3", "06.4", "06.5"],
    "test_hf_gpt2.py": ["06.2", "06.5"],
    "test_cross_entropy.py": ["03.5", "03.6"],
    "test_sequence_parallel.py": ["03.3", "03.4"],
    "test_ring.py": ["07.1"],
    "test_data_parallel.py": ["07.2", "07.3"],
    "test_fsdp.py": ["07.3", "07.4"],
    "test_memory.py": ["08.1", "08.2"],
    "test_scale.py": ["08.3"],
    "test_evaluate.py": ["10.1", "10.2", "10.3", "03.1", "03.2", "03.3", "03.4", "03.5"],
    "test_lm_eval.py": ["10.1", "10.2", "03.1", "03.2", "03.3", "03.4", "03.5"],
}
STUB = re.compile(r"NotImplementedError: (task \d+\.\d+: [^\n\"']*)|^(task \d+\.\d+: .*)$", re.M)


def pytest_configure(config):
    config.addinivalue_line("markers", "task(id): the test runs the code of course task `id` "
                                       "(select with -m \"task(id='03.4')\")")
    config.addinivalue_line("markers", "instructor_only: holds model answers; left out of student "
                                       "copies (python -m minimt.course student)")


def pytest_collection_modifyitems(items):
    for item in items:
        for task_id in TASKS_OF_TEST_FILE.get(item.path.name, ()):
            item.add_marker(pytest.mark.task(id=task_id))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure caused by an unwritten task's stub is reported as one line naming the task."""
    report = yield
    if report.failed and call.excinfo is not None:
        text = f"{call.excinfo.typename}: {call.excinfo.value}"
        found = STUB.search(text)
        if found and ("NotImplementedError" in text or call.excinfo.errisinstance(NotImplementedError)):
            report.longrepr = f"needs {found.group(1) or found.group(2)}"
    return report


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run faster on one thread; on a busy 2-core machine, 2 threads can be 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
