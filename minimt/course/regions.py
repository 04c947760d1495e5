"""Solution regions: the lines between `### BEGIN SOLUTION` and `### END SOLUTION` inside a
function body (package) or a notebook cell, found, matched to their task and replaced."""
from __future__ import annotations

import ast
from dataclasses import dataclass

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


@dataclass(frozen=True)
class Region:
    """One region of a text: `begin` and `end` are the 0-based lines of the two markers."""
    begin: int
    end: int
    indent: str
    qualname: str  # the enclosing function, e.g. "RowParallelLinear.forward" ("" outside any)


def find_regions(text: str, python: bool = True) -> list[Region]:
    """Every region of `text`, with its enclosing function when `text` is Python source."""
    lines = text.splitlines()
    functions = _functions(text) if python else []
    regions, begin = [], None
    for i, line in enumerate(lines):
        marker = line.strip()
        if marker == BEGIN:
            if begin is not None:
                raise ValueError(f"line {i + 1}: {BEGIN} inside another region")
            begin = i
        elif marker == END:
            if begin is None:
                raise ValueError(f"line {i + 1}: {END} without {BEGIN}")
            indent = lines[begin][:len(lines[begin]) - len(lines[begin].lstrip())]
            inside = [(lo, name) for lo, hi, name in functions if lo < begin + 1 <= hi]
            qualname = max(inside)[1] if inside else ""  # the innermost function
            regions.append(Region(begin, i, indent, qualname))
            begin = None
    if begin is not None:
        raise ValueError(f"line {begin + 1}: {BEGIN} never closed by {END}")
    return regions


def _functions(text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, dotted qualname) of every function, 1-based like ast."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)
    visit(ast.parse(text), "")
    return found


def body(text: str, region: Region) -> str:
    """The lines strictly between the markers, as in the file."""
    return "\n".join(text.splitlines()[region.begin + 1:region.end])


def replace(text: str, replacements: dict[Region, str]) -> str:
    """`text` with the body of each given region replaced (markers kept)."""
    lines = text.splitlines()
    for region in sorted(replacements, key=lambda r: -r.begin):
        new = replacements[region].splitlines()
        lines[region.begin + 1:region.end] = new
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def owns(target: str, module_path: str, qualname: str) -> bool:
    """True when a region in `module_path` (e.g. "minimt/parallel/tensor.py") inside function
    `qualname` belongs to the task whose target is `target` (a function, or a class: all its methods)."""
    module, _, name = target.partition(":")
    if module.replace(".", "/") + ".py" != module_path:
        return False
    return qualname == name or qualname.startswith(name + ".")


def stub(task, indent: str) -> str:
    """The line a student copy has in place of a task's solution."""
    return f'{indent}raise NotImplementedError("task {task.id}: {task.statement}; see {task.section}")'
