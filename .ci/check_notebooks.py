"""Fail if a COMMITTED notebook carries outputs or execution counts (notebooks ship clean).

It reads the notebooks of the commit being checked (HEAD), not the working copy: a learner's
executed notebooks may hold outputs, which the nbstripout filter removes when they are committed."""
import json
import pathlib
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout


paths = [p for p in git("ls-tree", "-r", "--name-only", "HEAD", "notebooks/").split()
         if p.endswith(".ipynb")]
dirty = []
for path in paths:
    for i, cell in enumerate(json.loads(git("show", f"HEAD:{path}"))["cells"]):
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count")):
            dirty.append(f"{path}: cell {i} has outputs or an execution count")
if dirty:
    print("Notebooks must be committed without outputs. Install the filter that strips them at\n"
          "commit time (the README's set-up does it):\n"
          "  git config filter.nbstripout.clean '.venv/bin/nbstripout --keep-id --extra-keys metadata.language_info'\n"
          "then commit the notebooks again (git add --renormalize notebooks && git commit).\n"
          + "\n".join(dirty))
    sys.exit(1)
print(f"committed notebooks clean: {len(paths)} checked")
