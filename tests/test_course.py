# course: instructor only (checks the instructor repository and the copies it writes)
"""The course machinery: solution regions, the student copy (no solution text, every task stubbed,
a fresh git history), the grader (0 on a fresh copy, full points once the originals are pasted
back with catch_up, which makes the copy's package the instructor's, byte for byte), and the
checkers' teaching messages for wrong answers."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import minimt.course
from minimt.course import regions
from minimt.course.pack import write_pack
from minimt.course.student import find_leaks, solution_lines, write_student_copy
from minimt.exercises import ExerciseError, all_tasks

ROOT = Path(__file__).resolve().parents[1]
TASKS = all_tasks()


def grade_in(root: Path, *args: str, exit_code: int = 0) -> tuple[dict, str]:
    """Run `python -m minimt.course grade --jobs 2` (one check per core of the CI machine) at `root`
    with its package first on the path; it must exit with `exit_code` (1: some task failed)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "minimt.course", "grade", "--jobs", "2", *args],
                          cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == exit_code, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


@pytest.fixture(scope="session")
def student_copy(tmp_path_factory) -> Path:
    return write_student_copy(tmp_path_factory.mktemp("course") / "student")


@pytest.fixture(scope="session")
def pack(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pack") / "catch_up.json"
    write_pack(path)
    return path


# ---------------------------------------------------------------------------- tasks and regions

def test_at_least_14_tasks_over_notebooks_01_to_06_each_with_one_region_in_its_target():
    ids = [t.id for t in TASKS]
    assert len(ids) == len(set(ids))
    assert len([i for i in ids if "01" <= i[:2] <= "06"]) >= 14
    assert {i[:2] for i in ids} >= {"01", "02", "03", "04", "05", "06"}
    for task in TASKS:
        assert task.points > 0 and task.statement and task.section.startswith("notebook ")
        module, _, _ = task.target.partition(":")
        path = module.replace(".", "/") + ".py"
        text = (ROOT / path).read_text()
        owned = [r for r in regions.find_regions(text) if regions.owns(task.target, path, r.qualname)]
        assert owned, f"task {task.id}: no solution region in {task.target}"


def test_every_package_region_belongs_to_a_task():
    for path in sorted((ROOT / "minimt").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for region in regions.find_regions(path.read_text()):
            assert any(regions.owns(t.target, rel, region.qualname) for t in TASKS), (rel, region)


def test_regions_know_their_function_and_the_stub_follows_the_contract():
    source = ("class Layer:\n    def forward(self, x):\n        \"\"\"Doc.\"\"\"\n"
              "        ### BEGIN SOLUTION\n        return x\n        ### END SOLUTION\n")
    (region,) = regions.find_regions(source)
    assert (region.qualname, region.indent, regions.body(source, region)) == (
        "Layer.forward", "        ", "        return x")
    row = next(t for t in TASKS if t.target.endswith("RowParallelLinear.forward"))
    assert regions.stub(row, "") == (f'raise NotImplementedError("task {row.id}: {row.statement}; '
                                     f'see notebook 03, section 3")')
    assert row.statement.startswith("write RowParallelLinear.forward")
    with pytest.raises(ValueError, match="never closed"):
        regions.find_regions("def f():\n    ### BEGIN SOLUTION\n    pass\n")


def test_a_failed_check_renders_in_jupyter_without_a_traceback():
    error = ExerciseError("task 01.1, case 2: got 1, expected 2")
    assert error._render_traceback_() == ["ExerciseError: task 01.1, case 2: got 1, expected 2"]
    with pytest.raises(ExerciseError, match="no task '99.9'"):
        minimt.course.check("99.9")


# ---------------------------------------------------------------------------- grade: three repositories

def test_student_copy_gives_0_and_every_task_fails_with_its_own_message(student_copy):
    record, table = grade_in(student_copy, exit_code=1)
    assert record["points"] == 0 and record["max_points"] == sum(t.points for t in TASKS)
    assert [t["id"] for t in record["tasks"]] == [t.id for t in TASKS]
    rows = [line for line in table.splitlines() if line[:2].isdigit()]
    for task, row in zip(TASKS, rows):
        assert row.startswith(task.id) and f"FAILED: task {task.id}" in row, row


def test_one_task_can_be_graded_alone(student_copy):
    record, table = grade_in(student_copy, "--task", "05.1", exit_code=1)
    assert [t["id"] for t in record["tasks"]] == ["05.1"]
    assert "task 05.1 not written yet" in table and "minimt/precision.py" in table


def test_pasted_back_copy_gives_full_points(student_copy, pack, tmp_path):
    copy = tmp_path / "pasted"
    shutil.copytree(student_copy, copy, ignore=shutil.ignore_patterns(".git"))
    for task in TASKS:
        minimt.course.catch_up(task.id, pack=pack, root=copy)
    package = sorted(p.relative_to(ROOT) for p in (ROOT / "minimt").rglob("*.py"))
    assert package == sorted(p.relative_to(copy) for p in (copy / "minimt").rglob("*.py"))
    for path in package:   # so grading this copy grades the instructor's package: one full grade, not two
        assert (copy / path).read_text() == (ROOT / path).read_text(), path
    record, table = grade_in(copy)
    failed = [t["id"] for t in record["tasks"] if not t["passed"]]
    assert not failed, table
    assert record["points"] == record["max_points"] == sum(t.points for t in TASKS)
    assert f"total   {record['points']}/{record['max_points']}".replace(" ", "") in table.replace(" ", "")


def notebook_cells(root: Path):
    """(relative path, cell) of every cell of the notebooks in `root`/notebooks."""
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            yield str(path.relative_to(root)), cell


def regions_file(task) -> str:
    return task.target.partition(":")[0].replace(".", "/") + ".py"


# ---------------------------------------------------------------------------- the student copy

def test_student_copy_holds_no_solution_text(student_copy):
    lines = solution_lines(ROOT)
    assert len(lines) > 50  # the detector knows the solutions it looks for
    written = [regions.body("".join(cell["source"]), region).splitlines()
               for _, cell in notebook_cells(ROOT) if cell["cell_type"] == "markdown"
               for region in regions.find_regions("".join(cell["source"]), python=False)]
    assert len(written) >= 4  # the "predict, then measure" answers: prose is looked for too
    assert all(line.strip() in lines for answer in written for line in answer if len(line) > 20)
    assert find_leaks(student_copy, lines) == []
    leaky = ROOT / "minimt" / "attention.py"  # and it finds a pasted one
    assert find_leaks(ROOT, lines) and any(str(leaky.relative_to(ROOT)) in leak
                                           for leak in find_leaks(ROOT, lines))


def test_student_copy_is_the_whole_repository_with_stubs_and_one_commit(student_copy):
    assert "This is a student copy" in (student_copy / "README.md").read_text()
    for rel in ("README.md", "requirements.txt", "pyproject.toml", ".ci/run", "tests/conftest.py",
                "notebooks/01_attention.ipynb", "minimt/parallel/tensor.py"):
        assert (student_copy / rel).exists(), rel
    assert not (student_copy / "tests" / "test_exercises.py").exists()  # holds model answers
    assert not (student_copy / "tests" / "test_course.py").exists()
    for path in (student_copy / "tests").glob("test_*.py"):  # tests holding model answers dropped
        assert "@pytest.mark.instructor_only" not in path.read_text(), path.name
    for task in TASKS:
        assert f'raise NotImplementedError("task {task.id}: {task.statement}; see {task.section}")' \
            in (student_copy / regions_file(task)).read_text()
    log = subprocess.run(["git", "log", "--oneline"], cwd=student_copy, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert len(log) == 1
    stubs = {"code": "raise NotImplementedError", "markdown": "YOUR ANSWER HERE"}  # nbgrader's
    for rel, cell in notebook_cells(student_copy):
        source = "".join(cell["source"])
        for region in regions.find_regions(source, python=False):
            assert regions.body(source, region).strip() == stubs[cell["cell_type"]], rel
    env = {**os.environ, "PYTHONPATH": str(student_copy)}
    done = subprocess.run([sys.executable, "-c", "import minimt, minimt.course; "
                           "print(minimt.__file__)"], cwd=student_copy, env=env,
                          capture_output=True, text=True, check=True)
    assert done.stdout.startswith(str(student_copy))


def test_student_copy_leaves_out_the_guides_and_its_links_all_resolve(student_copy):
    for guide in ("docs/instructor.md", "docs/workshop.md"):  # a rubric; solution steps
        assert (ROOT / guide).exists() and not (student_copy / guide).exists(), guide
    readme = (student_copy / "README.md").read_text()
    assert "instructor guide" in readme and "instructor's repository" in readme
    assert "instructor only" not in readme.split("## Teaching with minimt")[1]
    for path in student_copy.rglob("*.md"):
        if ".git" in path.parts:
            continue
        for target in re.findall(r"\]\(([^)#\s]+)", path.read_text()):
            if not re.match(r"\w+:", target):  # a file of the copy, not a web address
                assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_catch_up_keeps_the_learners_own_code_unless_forced(student_copy, pack, tmp_path):
    copy = tmp_path / "mine"
    shutil.copytree(student_copy, copy, ignore=shutil.ignore_patterns(".git"))
    path = copy / "minimt" / "sampling.py"
    path.write_text(path.read_text().replace(
        'raise NotImplementedError("task 06.3', 'return logits  # my try\n    raise NotImplementedError("task 06.3'))
    with pytest.raises(ExerciseError, match="force=True"):
        minimt.course.catch_up("06.3", pack=pack, root=copy)
    assert "my try" in (copy / ".catch_up" / "06.3.py").read_text()
    minimt.course.catch_up("06.3", pack=pack, root=copy, force=True)
    assert "my try" not in path.read_text()
    with pytest.raises(ExerciseError, match="no catch-up pack"):
        minimt.course.catch_up("06.3", pack=tmp_path / "missing.json", root=copy)


def test_the_readme_lists_every_task_with_its_points_and_section():
    readme = (ROOT / "README.md").read_text()
    for task in TASKS:
        row = next((line for line in readme.splitlines() if line.startswith(f"| {task.id} |")), "")
        assert row.startswith(f"| {task.id} | {task.points} |") and row.rstrip().endswith(
            f"| {task.section} |"), f"README's task table: {task.id}"


def test_the_readmes_grade_example_has_the_courses_max_points():
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r'"max_points": (\d+)', readme)
    total = sum(t.points for t in TASKS)
    assert examples == [str(total)], f"README's grade example says max_points {examples}; the " \
                                     f"tasks' points sum to {total}: write {total} there"


def test_a_notebook_names_the_earlier_task_it_needs(student_copy):
    minimt.course.require("02.1", "03.4")  # written here
    env = {**os.environ, "PYTHONPATH": str(student_copy)}
    done = subprocess.run([sys.executable, "-c", "import minimt.course; minimt.course.require('02.1')"],
                          cwd=student_copy, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert ("ExerciseError: this notebook runs task 02.1, not written yet: write Block.forward"
            in done.stderr)


def test_a_student_notebook_stops_at_its_first_task_with_the_checkers_message(student_copy,
                                                                             monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(student_copy / "notebooks" / "01_attention.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3", resources={
        "metadata": {"path": str(student_copy / "notebooks")}})
    monkeypatch.setenv("PYTHONPATH", str(student_copy))  # the kernel imports the copy's package
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        client.execute()
    stopped = [(cell, out) for cell in notebook.cells for out in cell.get("outputs", [])
               if out.get("output_type") == "error"]
    assert len(stopped) == 1
    cell, error = stopped[0]
    assert "".join(cell.source) == 'minimt.course.check("01.1")'
    statement = next(t.statement for t in TASKS if t.id == "01.1")
    assert statement.startswith("write the attention formula in scaled_dot_product_attention")
    assert error["traceback"] == [f"ExerciseError: task 01.1 not written yet: {statement} in "
                                  f"minimt/attention.py (between ### BEGIN SOLUTION and ### END "
                                  f"SOLUTION); see notebook 01, section 1"]


# ---------------------------------------------------------------------------- the tools under misuse

def test_student_refuses_an_out_dir_inside_the_repository_a_file_or_a_full_folder(tmp_path):
    inside = ROOT / "student-copy-here"
    with pytest.raises(SystemExit, match=r"student .*student-copy-here: that is inside the "
                                         r"instructor's repository .*give a folder outside it"):
        write_student_copy(inside)
    assert not inside.exists()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(SystemExit, match=r"student .*notes.txt: that is a file; give a new folder"):
        write_student_copy(a_file)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(SystemExit, match="that folder is not empty; give a new folder"):
        write_student_copy(tmp_path / "full")
    assert a_file.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "full", "notes.txt"]


def test_course_tools_run_from_an_installed_package_refuse_with_a_sentence(tmp_path):
    installed = tmp_path / "site-packages"     # minimt beside everything else installed
    shutil.copytree(ROOT / "minimt", installed / "minimt",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (installed / "other_package").mkdir()
    script = ("import sys\nfrom minimt.course.__main__ import main\n"
              "for argv in (['student', 'copy'], ['nbgrader-tags', '--check'], ['site', 'site']):\n"
              "    try:\n        print('returned', main(argv))\n"
              "    except SystemExit as err:\n        print('refused:', err)\n")
    env = {**os.environ, "PYTHONPATH": str(installed)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("refused: ") for line in lines), done.stdout + done.stderr
    assert f"student: {installed} is not a checkout of the course" in lines[0]
    assert "run it from a clone of the course repository" in lines[0]
    for line in lines[1:]:
        assert f"no notebooks/ folder at {installed / 'notebooks'}" in line and "clone" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-packages"]  # nothing written


def test_a_half_written_pack_gets_a_sentence_and_changes_nothing(student_copy, pack, tmp_path):
    cut = tmp_path / "catch_up.json"
    cut.write_text(pack.read_text()[:500])
    before = (student_copy / "minimt" / "sampling.py").read_text()
    with pytest.raises(ExerciseError, match=r"catch_up.json is not a complete catch-up pack \(cut "
                                            r"short .*\): ask your host for the file again"):
        minimt.course.catch_up("06.3", pack=cut, root=student_copy)
    assert (student_copy / "minimt" / "sampling.py").read_text() == before


@pytest.mark.parametrize("breakage, said", [
    (lambda text: text[: len(text) // 2], r"not a notebook \(not valid JSON: .*, line \d+\)"),
    (lambda text: json.dumps({**json.loads(text), "cells": [
        {k: v for k, v in c.items() if k != "source"} for c in json.loads(text)["cells"]]}),
     r"cell 1 has no \"source\" or \"cell_type\""),
])
def test_a_broken_notebook_is_named_by_every_tool_and_no_copy_is_left(tmp_path, breakage, said):
    from minimt.course import nbgrader_tags, site
    from minimt.course.grade import copy_repository
    repo = tmp_path / "repo"
    copy_repository(ROOT, repo)
    notebook = repo / "notebooks" / "01_attention.ipynb"
    notebook.write_text(breakage(notebook.read_text()))
    fix = r"; restore it \(`git checkout -- .*01_attention.ipynb`\) or open and save it again"
    with pytest.raises(SystemExit, match=r"notebooks/01_attention.ipynb: " + said + fix):
        write_student_copy(tmp_path / "copy", root=repo, git=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]   # no copy, no partial folder
    for tool in (lambda: nbgrader_tags.tagged_text(notebook, {}), lambda: site.execute(notebook, 60)):
        with pytest.raises(SystemExit, match="01_attention.ipynb: " + said + fix):
            tool()


def test_site_refuses_an_out_dir_that_is_a_file(tmp_path):
    from minimt.course import site
    a_file = tmp_path / "site"
    a_file.write_text("mine")
    with pytest.raises(SystemExit, match=r"site .*site: that is a file, not a folder; give a folder"):
        site.build(a_file, ["00"])
    assert a_file.read_text() == "mine"


def test_under_nbgrader_autograde_every_task_check_refuses_the_instructors_package(monkeypatch):
    import minimt.exercises.memory as memory
    from minimt.course import nbgrader_tags
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")   # what nbgrader's autograde sets
    said = r"nbgrader is autograding with the instructor's package .*PYTHONPATH=/path/to/their"
    for task in TASKS:                                       # TASKS["07.1"].check(), check("01.1")
        with pytest.raises(ExerciseError, match=rf"^task {task.id}: {said}"):
            task.check()
        with pytest.raises(ExerciseError, match=rf"^task {task.id}: {said}"):
            minimt.course.check(task.id)
    direct = [name for name in nbgrader_tags.task_points()   # notebook 08 calls these directly
              if name.startswith("check_") and hasattr(memory, name)]
    assert direct
    for name in direct:
        with pytest.raises(ExerciseError, match=said):
            getattr(memory, name)()
    monkeypatch.setenv("NBGRADER_EXECUTION", "validate")     # a learner validating: checks run
    minimt.course.check("06.3")
