"""The repository keeps its promises: README and CI run the same test command, notebooks ship
without outputs, and the corpora are the documented files."""
import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt "
                "&& .venv/bin/python -m pytest")


def test_readme_and_ci_run_the_same_test_command():
    assert TEST_COMMAND in (ROOT / "README.md").read_text()
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


def test_notebooks_are_committed_without_outputs():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and not cell.get("execution_count"), path.name


def test_every_notebook_is_in_the_course_map():
    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert path.name in readme, f"{path.name} is missing from the README's course map"


def test_corpora_are_the_documented_files():
    expected = {
        "tinyshakespeare.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "lunyu.txt": "a132510d50a06cd9682aa4d31d6a2b30292f354f93522cd7c529da1007506691",
    }
    for name, sha in expected.items():
        assert hashlib.sha256((ROOT / "data" / name).read_bytes()).hexdigest() == sha, name
        assert sha in (ROOT / "data" / "README.md").read_text(), f"{name}: provenance missing"
