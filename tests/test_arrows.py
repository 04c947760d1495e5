"""The package's arrows (docs: DESIGN.md), read from the source with `ast`: the serial core never
imports `minimt.parallel`, no two modules import each other (directly or round a longer loop,
lazy imports inside functions included), and only comm.py puts bytes on the wire (the exercise
checkers call torch's collectives on purpose: they are the independent oracle)."""
import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minimt"
SERIAL_CORE = ("config", "attention", "model", "generate", "sampling", "precision", "clip_grads",
               "formats", "hf_gpt2", "tokenizer", "data", "pruning")


def module_name(path: Path) -> str:
    parts = ["minimt", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The minimt modules `path` imports anywhere in its body (`from . import x` counts as x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("minimt")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("minimt"):
                continue
            submodules = {f"{target}.{a.name}" for a in node.names}
            known = {module_name(p) for p in PACKAGE.rglob("*.py")}
            found |= (submodules & known) or {target}
    return found - {name}


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_the_serial_core_never_imports_the_parallel_package():
    for short in SERIAL_CORE:
        bad = {m for m in GRAPH[f"minimt.{short}"] if m.startswith("minimt.parallel")}
        assert not bad, f"minimt.{short} imports {bad}: hand it a hook instead (DESIGN.md)"


def test_no_import_cycles():
    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in GRAPH.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None
    for module in GRAPH:
        if not module.endswith("__init__") and GRAPH.get(module):
            cycle = cycle_from(module)
            # a package's __init__ re-exporting its submodules is not a cycle between concepts
            if cycle and not any(m in ("minimt", "minimt.parallel", "minimt.exercises",
                                       "minimt.course") for m in cycle):
                raise AssertionError(" -> ".join(cycle))


def test_the_check_sees_a_known_arrow():
    assert "minimt.hf_gpt2" in GRAPH["minimt.model"]           # the model reads GPT-2 weights
    assert "minimt.parallel.comm" in GRAPH["minimt.parallel.pipeline_runtime"]


def test_only_comm_talks_to_torch_distributed_collectives():
    wire = re.compile(r"dist\.(send|recv|isend|irecv|all_reduce|all_gather|reduce_scatter|"
                      r"broadcast|batch_isend_irecv|P2POp|all_to_all)\b")
    for path in PACKAGE.rglob("*.py"):
        if path.name != "comm.py" and "exercises" not in path.parts:  # checkers: torch's own
            assert not wire.search(path.read_text()), f"{path.name} bypasses comm's counter"
