# course: instructor only (autogrades the solved source notebooks)
"""nbgrader, for real: a temporary nbgrader course releases every course notebook
(`nbgrader generate_assignment`; no solution text may survive), then `nbgrader autograde` grades a
solved submission with the learner's repository first on the path (every automatic point), and the
unmodified release with no extra environment (zero: every task cell refuses to check the
instructor's package the kernel imports, in one sentence, and the grader finishes).

Autograding executes whole notebooks, so it runs on a representative subset, AUTOGRADED (tasks
checked in the package and warm-up exercises checked in notebook cells); every notebook already
runs top to bottom under nbval in the same suite, and generate_assignment runs on all of them here."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from minimt.course import nbgrader_tags
from minimt.course.notebooks import course_notebooks

ASSIGNMENT = "course"
AUTOGRADED = ["01_attention"]
CONFIG = """c = get_config()
c.CourseDirectory.course_id = "minimt"
c.Execute.timeout = 600   # seconds per cell; nbgrader's default of 30 is too short on a loaded CPU
"""


def nbgrader(course: Path, *args: str, package: Path | None = None) -> subprocess.CompletedProcess:
    """Run nbgrader in `course` with this interpreter's bin/ first on PATH (nbgrader runs alembic),
    its kernels importing minimt from the repository `package` when given."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """An nbgrader course: every notebook released, a solved and an unsolved submission autograded."""
    root = tmp_path_factory.mktemp("nbgrader-course")
    (root / "nbgrader_config.py").write_text(CONFIG)
    source = root / "source" / ASSIGNMENT
    source.mkdir(parents=True)
    for path in course_notebooks():
        (source / path.name).write_bytes(path.read_bytes())
    nbgrader(root, "generate_assignment", ASSIGNMENT)
    for student, folder in (("solved", source), ("unsolved", root / "release" / ASSIGNMENT)):
        submitted = root / "submitted" / student / ASSIGNMENT
        submitted.mkdir(parents=True)
        for stem in AUTOGRADED:
            (submitted / f"{stem}.ipynb").write_bytes((folder / f"{stem}.ipynb").read_bytes())
    nbgrader(root, "autograde", ASSIGNMENT, "--student", "solved", package=solved_package(root))
    nbgrader(root, "autograde", ASSIGNMENT, "--student", "unsolved")   # no PYTHONPATH: the trap
    return root


def solved_package(root: Path) -> Path:
    """A learner's repository with every task written: a student copy, each task pasted back."""
    from minimt.course import catch_up
    from minimt.course.pack import write_pack
    from minimt.course.student import write_student_copy
    copy = write_student_copy(root / "learner-copy", git=False)
    write_pack(root / "catch_up.json")
    for task_id in nbgrader_tags.task_points():
        if task_id[:1].isdigit():
            catch_up(task_id, pack=root / "catch_up.json", root=copy)
    return copy


def solution_lines(cell) -> list[str]:
    """The non-blank lines inside the cell's solution regions."""
    lines, inside = [], False
    for line in cell.source.split("\n"):
        if line.strip() in ("### BEGIN SOLUTION", "### END SOLUTION"):
            inside = line.strip() == "### BEGIN SOLUTION"
        elif inside and line.strip():
            lines.append(line.strip())
    return lines


def test_every_notebook_is_released_without_its_solutions(course):
    for path in course_notebooks():
        source = nbformat.read(path, as_version=4)
        released = nbformat.read(course / "release" / ASSIGNMENT / path.name, as_version=4)
        text = nbformat.writes(released)
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text, path.name
        by_id = {c.metadata["nbgrader"]["grade_id"]: c for c in released.cells}
        for cell in source.cells:
            hidden = solution_lines(cell)
            if not hidden:
                continue
            release = by_id[cell.metadata["nbgrader"]["grade_id"]]
            leaked = set(hidden) & {line.strip() for line in release.source.split("\n")}
            assert not leaked, f"{path.name}, cell {cell.id}: the release still holds {leaked}"
            stub = "raise NotImplementedError()" if cell.cell_type == "code" else "YOUR ANSWER HERE"
            assert stub in release.source, f"{path.name}, cell {cell.id}"


def scores(course: Path, student: str) -> dict[str, tuple[float, float]]:
    """(automatic score, automatic maximum) per autograded notebook, read from nbgrader's gradebook."""
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        return {stem: (nb.code_score, nb.max_code_score) for stem in AUTOGRADED
                for nb in [gradebook.find_submission_notebook(stem, ASSIGNMENT, student)]}


def test_a_solved_submission_gets_every_automatic_point(course):
    solved = scores(course, "solved")
    print("solved:", solved)
    for stem, (score, maximum) in solved.items():
        assert maximum > 0 and score == maximum, (stem, score, maximum)


def test_the_release_autograded_without_the_learners_package_gets_zero(course):
    unsolved = scores(course, "unsolved")
    print("unsolved, no PYTHONPATH:", unsolved)
    for stem, (score, maximum) in unsolved.items():
        assert maximum > 0 and score == 0, (stem, score, maximum)
        graded = nbformat.read(course / "autograded" / "unsolved" / ASSIGNMENT / f"{stem}.ipynb", 4)
        tests = [c for c in graded.cells if c.metadata["nbgrader"]["grade"]
                 and not c.metadata["nbgrader"]["solution"]]
        failed = [c for c in tests if any(o.output_type == "error" for o in c.outputs)]
        assert tests and failed == tests, stem          # every test cell ran, and failed
        tasks = [c for c in tests if nbgrader_tags.TASK_CHECK.search(c.source)]
        assert tasks, f"{stem}: no task cell among {AUTOGRADED}"
        for cell in tasks:                               # each says why, in one sentence
            (error,) = [o for o in cell.outputs if o.output_type == "error"]
            assert error.ename == "ExerciseError" and "nbgrader is autograding with the " \
                "instructor's package" in error.evalue and "PYTHONPATH=" in error.evalue, error.evalue
