"""conftest.py's runs_alone marker: under pytest -n 2, no other test runs while a marked one does
(it measures time); without the marker the two processes do overlap, so the check can fail."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = '''
import json, os, time
import pytest

def record(name):
    start = time.monotonic()
    time.sleep({seconds})
    with open(os.environ["INTERVALS"], "a") as f:
        f.write(json.dumps([name, start, time.monotonic()]) + "\\n")
'''


def intervals(tmp_path, marker: str):
    """Run a timed test (with `marker`) in one file and six short ones in another on pytest -n 2,
    with the repository's conftest.py; the (name, start, end) each test recorded."""
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_timed.py").write_text(RECORD.format(seconds=1.5) + f'''
{marker}
def test_timed():
    record("timed")
''')
    (tmp_path / "test_others.py").write_text(RECORD.format(seconds=0.3) + '''
@pytest.mark.parametrize("i", range(6))
def test_other(i):
    record(f"other{i}")
''')
    log, temp = tmp_path / "intervals.jsonl", tmp_path / "tmp"
    log.unlink(missing_ok=True)
    temp.mkdir(exist_ok=True)
    env = {"INTERVALS": str(log), "TMPDIR": str(temp), "PATH": "/usr/bin:/bin",
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}          # xdist alone: a quick start
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "xdist.plugin", "-n", "2",
                           "--dist", "loadfile", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(temp.glob("minimt-pytest-*")) == []  # the workers' lock files are gone
    return [json.loads(line) for line in log.read_text().splitlines()]


def overlapping(records):
    """The other tests whose run overlapped the timed one's."""
    (_, start, end), = [r for r in records if r[0] == "timed"]
    return [name for name, s, e in records if name != "timed" and s < end and e > start]


def test_a_runs_alone_test_overlaps_no_other_and_an_unmarked_one_does(tmp_path):
    alone = intervals(tmp_path, "@pytest.mark.runs_alone")
    assert len(alone) == 7 and overlapping(alone) == [], alone
    side_by_side = intervals(tmp_path, "")
    assert overlapping(side_by_side), side_by_side  # the control: the same run, unmarked


def root_conftest():
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Cell:
    """An nbval item as conftest.runs_alone sees it: no marker, a notebook cell with tags."""

    def __init__(self, tags):
        self.cell = {"metadata": {"tags": tags}}

    def get_closest_marker(self, name):
        return None


def test_a_notebook_cell_that_measures_a_bubble_is_tagged_runs_alone():
    runs_alone = root_conftest().runs_alone
    assert runs_alone(Cell(["runs_alone"])) and not runs_alone(Cell(["other"]))
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    measuring = [(path.name, cell) for path in notebooks
                 for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]
                 if cell["cell_type"] == "code" and "ActionCost(" in "".join(cell["source"])]
    assert measuring, "no notebook cell measures a bubble under ActionCost"
    for name, cell in measuring:
        assert runs_alone(Cell(cell["metadata"].get("tags", []))), \
            f"{name}: a cell measuring under ActionCost is not tagged runs_alone"
