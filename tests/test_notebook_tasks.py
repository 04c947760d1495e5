# course: instructor only (builds student copies and pastes solutions back)
"""Every notebook runs when, and only when, the tasks it declares are written.

A notebook declares the earlier notebooks' tasks it runs in its first code cell,
`minimt.course.require(...)`; its own tasks it checks (`minimt.course.check(id)`) right after the
section that teaches each. Proved in two halves, within CI's budget:

- "only when", here: in a student copy with exactly the declared tasks pasted back, each
  notebook's first cell passes; with any one of them stubbed again, it stops with one line naming
  that task. First cells only, all notebooks in one IPython shell: a few seconds.
- "when", in nbval's run of the instructor's notebooks, at no extra cost: the root conftest.py runs
  nbval's kernels in strict mode (minimt/course/strict.py), where every task region the notebook
  has neither required nor checked raises the NotImplementedError of the student copy's stub. The
  regions are the only difference between the instructor's package and such a copy (test_course
  checks that a copy with every task pasted back is the instructor's package, byte for byte), so a
  notebook that passes nbval in strict mode runs through in a copy holding only its declared tasks.
  Executing every notebook again in copies would cost as much as nbval itself (minutes); the
  guards cost nothing outside the regions. The strict-mode test below proves the guard fires, in
  the kernel and in forked ranks, and stays off outside IPython.
- statically: the first cell's form, the README's course map listing the same tasks, and each
  task checked in the section its text names, in task order.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minimt.course.pack import write_pack
from minimt.course.student import write_student_copy
from minimt.exercises import all_tasks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TASKS = {t.id: t for t in all_tasks()}
FIRST_LINES = ["%load_ext autoreload", "%autoreload 2", "import minimt.course"]
REQUIRE = re.compile(r"^minimt\.course\.require\(([^)]*)\)", re.M)


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def first_cell(path: Path) -> str:
    return "".join(next(c for c in cells(path) if c["cell_type"] == "code")["source"])


def declared(path: Path) -> list[str]:
    """The task ids the notebook's first cell requires."""
    found = REQUIRE.findall(first_cell(path))
    assert len(found) == 1, f"{path.name}: its first code cell must call minimt.course.require once"
    return re.findall(r'"(\d\d\.\d)"', found[0])


def own_tasks(path: Path) -> list[str]:
    return [i for i, t in TASKS.items() if t.section.startswith(f"notebook {path.name[:2]},")]


def test_every_first_cell_loads_autoreload_and_requires_only_earlier_tasks():
    assert len(NOTEBOOKS) >= 9
    for path in NOTEBOOKS:
        lines = [line.split("  #")[0].strip() for line in first_cell(path).splitlines()]
        assert lines[:3] == FIRST_LINES, f"{path.name}: first cell starts {lines[:3]}"
        for task_id in declared(path):
            assert task_id in TASKS and task_id[:2] < path.name[:2], (path.name, task_id)


def test_the_readme_course_map_lists_each_notebooks_required_tasks():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{path.name}` |")),
                   None)
        assert row, f"README's course map has no row for {path.name}"
        listed = row.rstrip(" |").rsplit("|", 1)[1].strip()
        assert listed == (", ".join(declared(path)) or "none"), (path.name, listed)


def test_each_task_is_checked_in_the_section_its_text_names_in_task_order():
    for path in NOTEBOOKS:
        section, checked = None, []
        for cell in cells(path):
            source = "".join(cell["source"])
            headings = re.findall(r"^## (\d+)\.", source, re.M) if cell["cell_type"] == "markdown" else []
            section = headings[-1] if headings else section
            for task_id in (re.findall(r'minimt\.course\.check\("(\d\d\.\d)"\)', source)
                            if cell["cell_type"] == "code" else []):
                checked.append(task_id)
                assert TASKS[task_id].section == f"notebook {path.name[:2]}, section {section}", (
                    f"{path.name}: task {task_id} is checked in section {section}, its text says "
                    f"{TASKS[task_id].section}")
        assert checked == own_tasks(path), (path.name, checked)


HARNESS = r"""
import contextlib, io, json, sys
from IPython.core.interactiveshell import InteractiveShell
import minimt.course
from minimt.course import regions
from minimt.course.repo import repo_root, task_file, task_of_region
from minimt.exercises import all_tasks

pack, first_cells, declared = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
tasks = {t.id: t for t in all_tasks()}


def stub(task_id):
    task = tasks[task_id]
    path = repo_root() / task_file(task)
    text = path.read_text()
    mine = [r for r in regions.find_regions(text) if task_of_region(task_file(task), r, [task])]
    path.write_text(regions.replace(text, {r: regions.stub(task, r.indent) for r in mine}))


def paste(task_id):
    with contextlib.redirect_stdout(io.StringIO()):
        minimt.course.catch_up(task_id, pack=pack, force=True)


import minimt.attention  # imported while 01.2 is a stub; saved afterwards; no autoreload yet
paste("01.2")
with contextlib.redirect_stdout(io.StringIO()):
    minimt.course.check("01.2")  # must see the saved file
stub("01.2")



def run(source):
    # a first cell in a fresh shell, as in a fresh kernel: (error type, what it showed)
    InteractiveShell.clear_instance()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        error = InteractiveShell.instance().run_cell(source).error_in_exec
    return type(error).__name__ if error else None, out.getvalue()


report = {}
for name, source in first_cells.items():
    for task_id in declared[name]:
        paste(task_id)
    report[name] = {"all written": run(source)}
    for task_id in declared[name]:
        stub(task_id)
        report[name][task_id] = run(source)
        paste(task_id)
    for task_id in declared[name]:
        stub(task_id)
print(json.dumps(report))
"""


def test_a_copy_with_exactly_the_declared_tasks_passes_each_first_cell_and_any_one_missing_stops_it(
        tmp_path):
    copy = write_student_copy(tmp_path / "student", git=False)
    pack = tmp_path / "catch_up.json"
    write_pack(pack)
    firsts = {p.name: first_cell(p) for p in NOTEBOOKS}
    needs = {p.name: declared(p) for p in NOTEBOOKS}
    env = {k: v for k, v in os.environ.items() if k != "MINIMT_STRICT_TASKS"}
    done = subprocess.run([sys.executable, "-c", HARNESS, str(pack), json.dumps(firsts),
                           json.dumps(needs)], cwd=copy / "notebooks", capture_output=True,
                          text=True, timeout=240, env={**env, "PYTHONPATH": str(copy)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert sum(len(needs[name]) for name in needs) >= 15
    for name, rows in report.items():
        assert rows.pop("all written")[0] is None, name
        assert list(rows) == needs[name]
        for task_id, (error, shown) in rows.items():
            assert error == "ExerciseError" and shown.strip().count("\n") == 0, (name, shown)
            assert shown.startswith(f"ExerciseError: this notebook runs task {task_id}, not "
                                    f"written yet: {TASKS[task_id].statement}"), (name, shown)


STRICT = r"""
import torch
from IPython.core.interactiveshell import InteractiveShell
from minimt.attention import KVCache

k = torch.zeros(1, 1, 2, 4)  # (B, H, T, D)
KVCache().append(k, k)  # no IPython shell yet: require() never guards a plain interpreter
shell = InteractiveShell.instance()
shell.user_ns.update(torch=torch, KVCache=KVCache, k=k, re=re)
assert shell.run_cell('import minimt.course\nminimt.course.require("02.1")').success
result = shell.run_cell("KVCache().append(k, k)")
assert isinstance(result.error_in_exec, NotImplementedError), result.error_in_exec
assert "task 06.1" in str(result.error_in_exec) and "strict mode" in str(result.error_in_exec)
result = shell.run_cell('''
from minimt import GPT, GPTConfig
from minimt.parallel import launch
from minimt.parallel.tensor import apply_tensor_parallel

config = GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=8)
GPT(config)(torch.zeros(1, 4, dtype=torch.long))  # 02.1: declared


def forward(ctx):
    torch.manual_seed(0)
    model = GPT(config)
    apply_tensor_parallel(model, ctx)
    return model(torch.zeros(1, 4, dtype=torch.long))[0].shape


launch(forward, tp=2)''')
error = str(result.error_in_exec)
assert type(result.error_in_exec).__name__ == "RankError", error
assert "strict mode" in error and re.search(r"task 03\.\d", error), error
minimt_strict = __import__("minimt.course.strict", fromlist=["allow"])
minimt_strict.allow("06.1")
assert shell.run_cell("KVCache().append(k, k)").success
print("strict mode ok")
"""


def test_strict_mode_refuses_undeclared_tasks_in_the_kernel_and_in_forked_ranks():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MINIMT_STRICT_TASKS": "1"}
    done = subprocess.run([sys.executable, "-c", "import re\n" + STRICT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "strict mode ok" in done.stdout, (
        done.stdout[-2000:] + done.stderr[-3000:])


def test_nbval_kernels_and_only_they_run_in_strict_mode(monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    monkeypatch.delenv("MINIMT_STRICT_TASKS", raising=False)
    conftest.pytest_runtest_setup(type("Item", (), {"path": ROOT / "notebooks" / "01_attention.ipynb"}))
    assert os.environ.get("MINIMT_STRICT_TASKS") == "1"  # the kernel nbval starts next inherits it
    conftest.pytest_runtest_setup(type("Item", (), {"path": Path(__file__)}))
    assert "MINIMT_STRICT_TASKS" not in os.environ


# ---------------------------------------------------------------------------- exercises that leak

def exercises(path: Path):
    """(name, number of parameters, checker name, index) of each code exercise of a notebook."""
    found = []
    for i, cell in enumerate(cells(path)):
        source = "".join(cell["source"])
        defined = re.search(r"^def (\w+)\(([^)]*)\):\n(?:.*\n)*?\s*### BEGIN SOLUTION", source, re.M)
        if cell["cell_type"] == "code" and defined:
            later = "".join("".join(c["source"]) for c in cells(path)[i:i + 2])
            checker = re.search(rf"(check_\w+)\({defined.group(1)}\)", later)
            arity = len([p for p in defined.group(2).split(",") if p.strip()])
            found.append((defined.group(1), arity, checker.group(1), i))
    return found


def package_functions() -> dict[str, list]:
    """Public functions of the package (course machinery and checkers aside), by name."""
    import importlib
    import inspect
    import pkgutil

    import minimt
    functions: dict[str, list] = {}
    for info in pkgutil.walk_packages(minimt.__path__, "minimt."):
        if info.name.startswith(("minimt.exercises", "minimt.course", "minimt.__main__")):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == info.name:
                functions.setdefault(name, []).append(obj)
    return functions


def candidates(path: Path, index: int, exercise: str, arity: int, functions: dict) -> list:
    """Package functions the notebook names before exercise `index` that share a word with the
    exercise's name (warmup_count: num_warmup_microbatches) and take `arity` arguments, as they
    are or with a leading string the notebook passes them (pipeline_schedule("gpipe", ...))."""
    import functools
    import inspect
    text = "\n".join("".join(c["source"]) for c in cells(path)[:index])
    words = set(exercise.split("_")) - {"my", "of", "per", "the"}
    found = []
    for name in set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", text)) & functions.keys():
        if not words & set(name.split("_")):
            continue
        for fn in functions[name]:
            leading = re.findall(rf"\b{name}\(\"(\w+)\"", text)
            for candidate in [fn] + [functools.partial(fn, s) for s in sorted(set(leading))]:
                try:
                    inspect.signature(candidate).bind(*range(arity))
                except TypeError:
                    continue
                found.append((name, candidate))
    return found


def test_no_notebook_exercise_is_answered_by_a_package_function_it_shows_or_imports(capsys):
    import importlib
    import pkgutil

    import minimt.exercises
    modules = [importlib.import_module(f"minimt.exercises.{info.name}")
               for info in pkgutil.iter_modules(minimt.exercises.__path__)]
    functions = package_functions()
    leaks, tried = set(), []
    for path in NOTEBOOKS:
        for exercise, arity, checker_name, index in exercises(path):
            checker = next(getattr(m, checker_name) for m in modules if hasattr(m, checker_name))
            for name, candidate in candidates(path, index, exercise, arity, functions):
                tried.append((path.name, exercise, name))
                try:
                    checker(candidate)
                except Exception:  # noqa: BLE001 - any failure means the checker refused it
                    continue
                leaks.add(f"{path.name}: {exercise}")
    capsys.readouterr()
    assert len(tried) >= 8  # the search finds candidates at all
    assert leaks == set(), "exercises a package function answers"


# ------------------------------------------------------------ exercises that repeat a written task

REPEAT_SHARE = 0.8  # a task repeated with its names kept scored 0.82-1.00; distinct exercises <= 0.72


def code_tokens(code: str) -> list[str]:
    """Names, operators and numbers of a piece of code (comments and layout dropped)."""
    import io
    import tokenize
    kept = (tokenize.NAME, tokenize.OP, tokenize.NUMBER)
    try:
        return [t.string for t in tokenize.generate_tokens(io.StringIO(code).readline)
                if t.type in kept]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []


def repeated_share(exercise: str, task: str) -> float:
    """The share of the exercise's tokens that lie in runs it shares, in order, with the task."""
    import difflib
    mine, theirs = code_tokens(exercise), code_tokens(task)
    matcher = difflib.SequenceMatcher(None, mine, theirs, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / max(1, len(mine))


def test_no_notebook_exercise_repeats_a_task_solution():
    """A notebook exercise whose solution is mostly a task's solution region, token for token
    (03's column-parallel forward was task 03.3's body), repeats a task: it must ask something
    else. Static, so it also sees methods and closures the package-function search cannot call."""
    from minimt.course import regions
    from minimt.course.repo import task_file, task_of_region
    solutions = {}
    for task in TASKS.values():
        text = (ROOT / task_file(task)).read_text(encoding="utf-8")
        mine = [r for r in regions.find_regions(text) if task_of_region(task_file(task), r, [task])]
        solutions[task.id] = "\n".join(regions.body(text, r) for r in mine)
    repeats, seen = [], 0
    for path in NOTEBOOKS:
        for cell in cells(path):
            found = re.search(r"^def (\w+)\(.*?### BEGIN SOLUTION\n(.*?)### END SOLUTION",
                              "".join(cell["source"]), re.S | re.M)
            if cell["cell_type"] != "code" or not found:
                continue
            seen += 1
            share, task_id = max((repeated_share(found.group(2), body), task_id)
                                 for task_id, body in solutions.items())
            if share >= REPEAT_SHARE:
                repeats.append(f"{path.name}: {found.group(1)} is {share:.0%} task {task_id}'s")
    assert seen >= 15 and len(solutions) >= 30
    assert repeats == [], "exercises that repeat a task's solution"
