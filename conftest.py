"""pytest, repository-wide: nbval runs the course's notebooks (notebooks/NN_name.ipynb), not a
learner's own (Untitled.ipynb, scratch.ipynb, 03_tensor_parallel-Copy1.ipynb). A notebook named
on the command line always runs."""
import re

COURSE_NOTEBOOK = re.compile(r"\d\d_[a-z0-9_]+\.ipynb")


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix == ".ipynb" and not COURSE_NOTEBOOK.fullmatch(collection_path.name):
        return True
    return None
