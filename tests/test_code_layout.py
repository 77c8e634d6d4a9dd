"""The code's shape, as docs/architecture.md describes it: no library file over 600 lines, no function over 80, and
no import cycle between the library's modules (a package's own `__init__` aside)."""

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

# Where each installed package's files live (setup.cfg maps modeling/ and processing/ into pixelgpt).
PACKAGES = {"pixelgpt": REPO_ROOT / "pixelgpt", "pixelgpt.modeling": REPO_ROOT / "modeling",
            "pixelgpt.processing": REPO_ROOT / "processing"}


def library_modules() -> dict[str, Path]:
    modules = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def imported(name: str, path: Path, modules: dict) -> set[str]:
    """The library modules `name` imports at module level (absolute or relative, `from x import submodule` too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                  else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        found.update(t for t in targets if t in modules and t != name)
    # A module importing its own package's __init__ (or an __init__ importing its children) is no cycle to refuse.
    return {t for t in found if not name.startswith(t + ".")}


def test_no_library_file_over_600_lines_and_no_function_over_80():
    long_files, long_functions = [], []
    for name, path in library_modules().items():
        text = path.read_text()
        if len(text.splitlines()) > 600:
            long_files.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long_functions.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long_files == [] and long_functions == []


def test_no_import_cycle_between_library_modules():
    modules = library_modules()
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert graph["pixelgpt.training.loop"] >= {"pixelgpt.training.checkpoints", "pixelgpt.training.batches"}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, graph) if c]
    assert cycles == [], " -> ".join(cycles[0])


@pytest.mark.parametrize("hub_file", sorted(p.name for p in (REPO_ROOT / "modeling").glob("*.py")))
def test_files_that_travel_to_the_hub_import_only_their_siblings(hub_file):
    tree = ast.parse((REPO_ROOT / "modeling" / hub_file).read_text())
    absolute = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    absolute += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level]
    assert not [m for m in absolute if m.split(".")[0] == "pixelgpt"]
