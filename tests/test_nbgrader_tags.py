"""The nbgrader metadata tool: each cell's role follows from its content, and the committed
notebooks are tagged exactly as the tool tags them."""
import nbformat
import pytest

from minimt.course import nbgrader_tags
from minimt.course.notebooks import course_notebooks


def notebook(*cells):
    nb = nbformat.v4.new_notebook()
    for i, (kind, source) in enumerate(cells):
        cell = (nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell)(source)
        cell.id = f"c{i}"
        nb.cells.append(cell)
    return nb


def roles(nb):
    return [{k: v for k, v in c.metadata["nbgrader"].items() if k in ("grade_id", "solution", "grade",
                                                                       "locked", "points")}
            for c in nb.cells]


SOLVED_AND_CHECKED = """def my_mask(t):
    ### BEGIN SOLUTION
    return torch.ones(t, t).tril().bool()
    ### END SOLUTION


minimt.exercises.check_dilated_mask(my_mask)
print("done")"""


def test_a_solution_followed_by_its_check_becomes_a_solution_cell_and_a_test_cell():
    nb = nbgrader_tags.tag_notebook(notebook(("code", SOLVED_AND_CHECKED)), {})
    assert [c.source for c in nb.cells] == [SOLVED_AND_CHECKED.split("\n\n\n")[0],
                                            'minimt.exercises.check_dilated_mask(my_mask)\nprint("done")']
    assert [c.id for c in nb.cells] == ["c0", "c0-check"]
    assert roles(nb) == [
        {"grade_id": "solution_my_mask", "solution": True, "grade": False, "locked": False},
        {"grade_id": "check_dilated_mask", "solution": False, "grade": True, "locked": True,
         "points": nbgrader_tags.EXERCISE_POINTS}]
    again = nbgrader_tags.tag_notebook(nbformat.from_dict(nb), {})
    assert nbformat.writes(again) == nbformat.writes(nb)            # idempotent


def test_task_checks_take_the_tasks_points_and_demonstrations_are_not_graded():
    nb = nbgrader_tags.tag_notebook(notebook(
        ("code", 'minimt.course.check("03.2")'),
        ("code", "try:\n    minimt.exercises.check_dilated_mask(wrong)\nexcept ExerciseError as e:\n    print(e)"),
        ("markdown", "**Predict.** What happens?"),
        ("markdown", "**Your prediction:**\n\n### BEGIN SOLUTION\nIt halves.\n### END SOLUTION"),
        ("code", 'minimt.course.check("03.2")')), {"03.2": 5})
    assert roles(nb) == [
        {"grade_id": "task_03_2", "solution": False, "grade": True, "locked": True, "points": 5},
        {"grade_id": "c1", "solution": False, "grade": False, "locked": True},
        {"grade_id": "c2", "solution": False, "grade": False, "locked": True},
        {"grade_id": "c3", "solution": True, "grade": True, "locked": False,
         "points": nbgrader_tags.ANSWER_POINTS},
        {"grade_id": "task_03_2_2", "solution": False, "grade": True, "locked": True, "points": 5}]


@pytest.mark.parametrize("source, complaint", [
    ("Solutions sit between `### BEGIN SOLUTION` and `### END SOLUTION`.", "alone on its own line"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "has no ### END SOLUTION"),
])
def test_markers_nbgrader_would_misread_are_refused_with_advice(source, complaint):
    with pytest.raises(ValueError, match=complaint):
        nbgrader_tags.tag_notebook(notebook(("markdown", source)), {})


def test_an_unknown_task_is_refused():
    with pytest.raises(ValueError, match="no such task"):
        nbgrader_tags.tag_notebook(notebook(("code", 'minimt.course.check("09.9")')), {"03.2": 5})


def test_committed_notebooks_are_tagged_as_their_content_calls_for():
    points = nbgrader_tags.task_points()
    stale = [p.name for p in course_notebooks()
             if nbgrader_tags.tagged_text(p, points) != p.read_text(encoding="utf-8")]
    assert not stale, (f"{stale}: run `python -m minimt.course nbgrader-tags` and commit the result")


def test_every_notebook_from_03_on_has_a_written_answer():
    for path in course_notebooks():
        cells = nbformat.read(path, as_version=4).cells
        answers = [c for c in cells if c.metadata.get("nbgrader", {}).get("solution")
                   and c.cell_type == "markdown"]
        assert answers or int(path.name[:2]) < 3, f"{path.name} has no manually graded answer cell"


def test_a_cell_of_several_task_checks_becomes_one_test_cell_per_task():
    nb = nbgrader_tags.tag_notebook(notebook(
        ("code", 'minimt.course.check("03.1")\nminimt.course.check("03.2")')), {"03.1": 2, "03.2": 3})
    assert [(c.id, c.source) for c in nb.cells] == [("c0", 'minimt.course.check("03.1")'),
                                                    ("c0-check2", 'minimt.course.check("03.2")')]
    assert [(r["grade_id"], r["points"]) for r in roles(nb)] == [("task_03_1", 2), ("task_03_2", 3)]


def test_other_ways_of_calling_a_task_check_take_the_tasks_points():
    nb = nbgrader_tags.tag_notebook(notebook(
        ("code", 'TASKS["07.1"].check()'), ("code", "tasks.check_saved_tensor_bytes()")),
        {"07.1": 3, "08.1": 2, "check_saved_tensor_bytes": 2})
    assert [(r["grade_id"], r["points"]) for r in roles(nb)] == [("task_07_1", 3),
                                                                 ("check_saved_tensor_bytes", 2)]
