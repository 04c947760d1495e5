"""The repository keeps its promises: README and CI run the same test command, which also installs
the filter that strips notebook outputs at commit time; committed notebooks carry no outputs (a
learner's executed working copy may); nbval runs the course's notebooks only; JupyterLab opens at
the repository root; the corpora are the documented files."""
import hashlib
import importlib.util
import json
import pathlib
import re
import shlex
import subprocess
import sys

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILTER = ".venv/bin/nbstripout --keep-id --extra-keys metadata.language_info"
FILTER_SETUP = f"git config filter.nbstripout.clean '{FILTER}'"
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && " + FILTER_SETUP
TEST_COMMAND = INSTALL + " && .venv/bin/python -m pytest -n 2"
JUPYTER = ".venv/bin/jupyter lab"


def git(*args: str, cwd=ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def committed_notebooks() -> list[str]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: there are no commits to check")
    return [p for p in git("ls-tree", "-r", "--name-only", "HEAD", "notebooks/").split()
            if p.endswith(".ipynb")]


def test_readme_and_ci_run_the_same_test_command():
    assert TEST_COMMAND in (ROOT / "README.md").read_text()
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


def test_notebooks_are_committed_without_outputs():
    notebooks = committed_notebooks()
    assert notebooks, "no notebooks committed"
    for path in notebooks:
        for cell in json.loads(git("show", f"HEAD:{path}"))["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and not cell.get("execution_count"), (
                    f"{path} was committed with outputs: run the README's set-up (it installs the "
                    f"nbstripout filter), then `git add --renormalize notebooks` and commit again")


def test_the_set_up_filter_strips_outputs_at_commit_time_and_keeps_cell_ids(tmp_path):
    """In a scratch repository with this one's .gitattributes and the set-up's filter command."""
    git("init", "-q", cwd=tmp_path)
    (tmp_path / ".gitattributes").write_text((ROOT / ".gitattributes").read_text())
    (tmp_path / ".venv").symlink_to(pathlib.Path(sys.executable).parents[1])  # the venv in use
    subprocess.run(FILTER_SETUP, shell=True, cwd=tmp_path, check=True)
    (tmp_path / "notebooks").mkdir()
    cell = nbformat.v4.new_code_cell("print(6 * 7)", id="kept-id")
    cell.outputs, cell.execution_count = [nbformat.v4.new_output("stream", text="42\n")], 1
    language = {"language_info": {"name": "python", "version": "3.11"}}  # what Jupyter saves
    executed = nbformat.v4.new_notebook(cells=[cell], metadata=language)
    nbformat.write(executed, tmp_path / "notebooks" / "n.ipynb")
    git("add", "notebooks/n.ipynb", cwd=tmp_path)
    staged_notebook = json.loads(git("show", ":notebooks/n.ipynb", cwd=tmp_path))
    staged = staged_notebook["cells"][0]
    assert "language_info" not in staged_notebook["metadata"]
    assert staged["outputs"] == [] and staged["execution_count"] is None
    assert staged["id"] == "kept-id" and "".join(staged["source"]) == "print(6 * 7)"
    assert "42" in (tmp_path / "notebooks" / "n.ipynb").read_text()  # the working copy keeps it


def test_committed_notebooks_pass_the_filter_unchanged(tmp_path):
    """Else every notebook would show as modified right after the set-up installs the filter.
    The filter's own command rewrites copies of the committed notebooks, all in one process."""
    committed = {path: git("show", f"HEAD:{path}") for path in committed_notebooks()}
    copies = []
    for i, (path, text) in enumerate(committed.items()):
        copies.append(tmp_path / f"{i}_{pathlib.Path(path).name}")
        copies[-1].write_text(text, encoding="utf-8")
    command = [sys.executable, "-m", "nbstripout", *shlex.split(FILTER)[1:], *map(str, copies)]
    subprocess.run(command, capture_output=True, text=True, check=True)
    for (path, text), copy in zip(committed.items(), copies):
        assert copy.read_text(encoding="utf-8") == text, f"{path}: commit it through the filter (see the README)"


def test_every_course_notebook_is_in_the_course_map_and_run_by_nbval():
    readme = (ROOT / "README.md").read_text()
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)
    for path in committed_notebooks():
        name = pathlib.Path(path).name
        assert name in readme, f"{name} is missing from the README's course map"
        assert root_conftest.pytest_ignore_collect(ROOT / path, None) is None, name
    for own in ("Untitled.ipynb", "scratch.ipynb", "03_tensor_parallel-Copy1.ipynb"):
        assert root_conftest.pytest_ignore_collect(ROOT / "notebooks" / own, None) is True, own


def test_jupyterlab_opens_at_the_repository_root_with_the_welcome_notebook(monkeypatch):
    from jupyter_server.serverapp import ServerApp

    command = next(line for line in (ROOT / "README.md").read_text().splitlines()
                   if line.startswith(INSTALL + " && " + JUPYTER))
    monkeypatch.chdir(ROOT)
    app = ServerApp()
    app.parse_command_line(shlex.split(command.split(JUPYTER, 1)[1]))
    assert pathlib.Path(app.root_dir) == ROOT  # minimt/ and the README in the file browser
    assert app._resolve_file_to_run_and_root_dir() == "notebooks/00_welcome.ipynb"


def test_no_code_cell_ends_with_a_stray_value():
    """torch.manual_seed returns a Generator, which a notebook would print as the cell's value."""
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            lines = [line for line in "".join(cell["source"]).splitlines() if line.strip()]
            if cell["cell_type"] == "code" and lines:
                assert not re.match(r"\s*torch\.manual_seed\(.*\)\s*$", lines[-1]), path.name


def test_notebooks_show_package_code_highlighted_not_as_plain_text():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert "inspect.getsource" not in path.read_text(), f"{path.name}: use viz.show_source"


def test_corpora_are_the_documented_files():
    expected = {
        "tinyshakespeare.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "lunyu.txt": "a132510d50a06cd9682aa4d31d6a2b30292f354f93522cd7c529da1007506691",
    }
    for name, sha in expected.items():
        assert hashlib.sha256((ROOT / "data" / name).read_bytes()).hexdigest() == sha, name
        assert sha in (ROOT / "data" / "README.md").read_text(), f"{name}: provenance missing"
