"""pytest, repository-wide: nbval runs the course's notebooks (notebooks/NN_name.ipynb), not a
learner's own (Untitled.ipynb, scratch.ipynb, 03_tensor_parallel-Copy1.ipynb). A notebook named
on the command line always runs. A test marked runs_alone, or a notebook cell tagged runs_alone
(it measures time), runs with no other test beside it."""
import os
import re
import tempfile
from pathlib import Path

import pytest

try:
    import fcntl
except ImportError:  # Windows: tests run side by side, as without the marker
    fcntl = None

COURSE_NOTEBOOK = re.compile(r"\d\d_[a-z0-9_]+\.ipynb")


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix == ".ipynb" and not COURSE_NOTEBOOK.fullmatch(collection_path.name):
        return True
    return None


def pytest_runtest_setup(item):
    """nbval starts each notebook's kernel (with this process's environment) while setting up its
    first cell: notebooks run in strict task mode, every other test without it. In strict mode a
    notebook may run only the tasks its first cell requires and those it has checked
    (minimt/course/strict.py), which proves it runs in a student copy holding only those."""
    if item.path.suffix == ".ipynb":
        os.environ["MINIMT_STRICT_TASKS"] = "1"
    else:
        os.environ.pop("MINIMT_STRICT_TASKS", None)


_LOCKS = pytest.StashKey[tuple]()


def _open_locks(run):
    """The gate and main lock files the workers of xdist run `run` share; None outside xdist (a
    pytest a test starts takes no part) or where fcntl is missing (Windows)."""
    if run is None or fcntl is None:
        return None
    folder = Path(tempfile.gettempdir())
    return tuple(open(folder / f"minimt-pytest-{run}.{name}.lock", "a")
                 for name in ("gate", "main"))


def pytest_configure(config):
    config.addinivalue_line("markers", "runs_alone: measures time, so it runs while no other test "
                                       "does (under pytest -n, the other processes wait)")
    config.stash[_LOCKS] = _open_locks(getattr(config, "workerinput", {}).get("testrunuid"))


def pytest_unconfigure(config):
    for handle in config.stash.get(_LOCKS, None) or ():
        handle.close()
        Path(handle.name).unlink(missing_ok=True)


def runs_alone(item) -> bool:
    """A test marked runs_alone, or a notebook cell tagged runs_alone (its metadata's tags)."""
    cell = getattr(item, "cell", None) or {}
    return (item.get_closest_marker("runs_alone") is not None
            or "runs_alone" in cell.get("metadata", {}).get("tags", []))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest-xdist, a test that runs_alone holds an exclusive lock and every other test
    (or notebook cell) a shared one. A gate taken first lets no new shared holder in while a
    runs_alone test waits, so it cannot starve between the other process's tests."""
    locks = item.config.stash.get(_LOCKS, None)
    if not locks:
        return (yield)
    gate, main = locks
    alone = runs_alone(item)
    fcntl.flock(gate, fcntl.LOCK_EX)
    fcntl.flock(main, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
    if not alone:
        fcntl.flock(gate, fcntl.LOCK_UN)
    try:
        return (yield)
    finally:
        fcntl.flock(main, fcntl.LOCK_UN)
        if alone:
            fcntl.flock(gate, fcntl.LOCK_UN)

