"""pytest, repository-wide: nbval runs the course's notebooks (notebooks/NN_name.ipynb), not a
learner's own (Untitled.ipynb, scratch.ipynb, 03_tensor_parallel-Copy1.ipynb). A notebook named
on the command line always runs."""
import os
import re

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
