# course: instructor only (grades solutions of the instructor repository, abused on purpose)
"""The grader cannot be fooled or stopped: a solution that loops, exits, crashes or deletes a
course file fails its own task with a sentence, grading goes on, the learner's folder is untouched,
no process is left behind, the JSON line comes last; `--many` grades a folder of learners."""
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minimt.course import grade_cli as grade_command
from minimt.course.grade import copy_repository, run_task_isolated, run_tasks_isolated

ROOT = Path(__file__).resolve().parents[1]
TASK, TARGET = "06.3", "minimt/sampling.py"    # top_k_filter: a 1-point task, checked in ~1 s
BEGIN = "### BEGIN SOLUTION\n"


def abused(folder: Path, code: str, root: Path = ROOT) -> Path:
    """A copy of `root` in `folder` whose top_k_filter runs `code` before its own solution."""
    copy_repository(root, folder)
    path = folder / TARGET
    text = path.read_text()
    at = text.index(BEGIN, text.index("def top_k_filter")) + len(BEGIN)
    path.write_text(text[:at] + "".join(f"    {line}\n" for line in code.splitlines()) + text[at:])
    return folder


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")


def test_an_endless_loop_fails_its_task_at_the_timeout_and_leaves_no_process(tmp_path):
    pid_file = tmp_path / "helper.pid"   # a helper process, as a check's gloo ranks would be
    repo = abused(tmp_path / "repo", f"import subprocess, sys\n"
                  f"helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
                  f"open({str(pid_file)!r}, 'w').write(str(helper.pid))\n"
                  f"while True:\n    pass")
    start = time.monotonic()
    passed, message = run_task_isolated(TASK, repo, timeout_s=3)
    assert not passed and message == (f"task {TASK}: the check did not finish in 3 s (an endless "
                                      f"loop?); it was stopped")
    assert time.monotonic() - start < 30
    deadline = time.monotonic() + 5
    while alive(int(pid_file.read_text())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(int(pid_file.read_text())), "the check's helper process outlived it"


@pytest.mark.parametrize("code, said", [
    ("import sys\nsys.exit(0)", "your code called sys.exit(0); a task's code must return"),
    ("import os\nos._exit(0)", "ended its process (exit status 0) before it finished: does your "
                               "code call sys.exit() or os._exit()?"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "crashed (killed by SIGSEGV)"),
    ("import pathlib\n(pathlib.Path(__file__).resolve().parents[1] / 'data' / 'lunyu.txt').unlink()",
     "deleted data/lunyu.txt in the repository; a task's code must not delete or change"),
])
def test_an_exit_a_crash_or_a_deleted_file_fails_the_task_and_harms_nothing(tmp_path, code, said):
    repo = abused(tmp_path / "repo", code)
    passed, message = run_task_isolated(TASK, repo, timeout_s=120)
    assert not passed and message.startswith(f"task {TASK}: ") and said in message, message
    assert (repo / "data" / "lunyu.txt").exists()         # the graded folder is untouched


def grade_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-m", "minimt.course", "grade", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_grading_goes_on_after_an_exit_the_json_line_is_last_and_the_status_is_1(tmp_path):
    repo = abused(tmp_path / "repo", "import sys\nsys.exit(0)")
    done = grade_cli(repo, "--task", TASK, "--task", "06.4")
    assert done.returncode == 1, done.stdout + done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["points"] == 2 and record["max_points"] == 3
    assert [(t["id"], t["passed"]) for t in record["tasks"]] == [(TASK, False), ("06.4", True)]
    assert "FAILED: task 06.3: your code called sys.exit(0)" in done.stdout


def test_checks_run_two_at_a_time_keep_their_order_and_a_hang_holds_up_no_other(tmp_path):
    repo = abused(tmp_path / "repo", "import time\ntime.sleep(600)")  # a hang that leaves a core free
    start = time.monotonic()
    results = list(run_tasks_isolated([TASK, "06.4", "01.2"], repo, timeout_s=20, jobs=2))
    assert [(task, passed) for task, passed, _ in results] == [
        (TASK, False), ("06.4", True), ("01.2", True)], results
    assert "did not finish in 20 s" in results[0][2]
    assert time.monotonic() - start < 90


@pytest.mark.parametrize("args, said", [
    (["--jobs", "0"], "--jobs 0: give how many checks may run at once, 1 or more"),
    (["--task", "99.9"], "--task 99.9: no such task; the tasks are 01.1"),
    (["--timeout", "0"], "--timeout 0: give a positive number of seconds"),
    (["--out", "x.csv"], "--out is for --many SUBMISSIONS_DIR"),
])
def test_a_wrong_argument_is_named_and_the_json_line_still_comes_last(capsys, args, said):
    assert grade_command.main(args) == 2
    out, err = capsys.readouterr()
    assert said in err and said in json.loads(out.strip().splitlines()[-1])["error"]


def test_many_grades_a_folder_of_learners_from_their_regions_alone(tmp_path, capsys):
    learners = tmp_path / "submissions"
    copy_repository(ROOT, learners / "alice")                            # everything written
    cheat = abused(learners / "bob", 'raise NotImplementedError("task 06.3: write top_k_filter")')
    checker = cheat / "minimt" / "exercises" / "generation.py"           # and a checker made blind
    checker.write_text(checker.read_text().replace('def check_top_k():\n',
                                                   'def check_top_k():\n    return\n', 1))
    (learners / "carol").mkdir()
    (learners / "carol" / "notes.txt").write_text("my homework")
    out = tmp_path / "grades.csv"
    assert grade_command.main(["--many", str(learners), "--out", str(out), "--task", TASK]) == 1
    printed = capsys.readouterr().out
    assert json.loads(printed.strip().splitlines()[-1])["learners"] == {
        "alice": {"points": 1, "max_points": 1}, "bob": {"points": 0, "max_points": 1},
        "carol": {"points": 0, "max_points": 1}}
    rows = {(r["learner"], r["task"]): r for r in csv.DictReader(out.open())}
    assert rows["alice", TASK]["points"] == "1" and rows["alice", TASK]["first_failure"] == ""
    assert "alice       1/1  every task passed" in printed
    assert rows["bob", TASK]["points"] == "0"
    assert rows["bob", TASK]["first_failure"].startswith("task 06.3 not written yet: write top_k_filter")
    assert rows["carol", ""]["first_failure"].startswith("not a course repository: carol/ has no minimt/")
    assert not list(tmp_path.glob("*.partial"))
