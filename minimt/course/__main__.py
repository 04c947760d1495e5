"""`python -m minimt.course <command>`: each command is a module of this package with a `main(argv)`."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "student": ("minimt.course.student", "write a student copy of the repository (solutions stubbed)"),
    "grade": ("minimt.course.grade_cli", "run every task's check and print the points"),
    "pack": ("minimt.course.pack", "write a catch-up pack of solved tasks for minimt.course.catch_up"),
    "site": ("minimt.course.site", "execute every notebook and write a static HTML site"),
    "nbgrader-tags": ("minimt.course.nbgrader_tags", "set the notebooks' nbgrader cell metadata from their content"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:<15}{help_}" for name, (_, help_) in COMMANDS.items())
        print(f"usage: python -m minimt.course <command> [options]\n\ncommands:\n{listing}",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, _ = COMMANDS[argv[0]]
    return importlib.import_module(module).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
