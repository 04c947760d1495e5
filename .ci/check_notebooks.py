"""Fail if a committed notebook carries outputs or execution counts (notebooks ship clean)."""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parents[1]
dirty = []
for path in sorted((root / "notebooks").glob("*.ipynb")):
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count")):
            dirty.append(f"{path.relative_to(root)}: cell {i} has outputs or an execution count")
if dirty:
    print("Notebooks must be committed without outputs. Clear them with\n"
          "  jupyter nbconvert --clear-output --inplace notebooks/*.ipynb\n" + "\n".join(dirty))
    sys.exit(1)
print(f"notebooks clean: {len(list((root / 'notebooks').glob('*.ipynb')))} checked")
