"""Imports point one way: no cycles between fastenv's modules, and the core never imports its outer layers.

Every ``import`` statement counts, at module level or inside a function, so a
cycle cannot hide behind a function-local import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastenv"
# Layers built on the core: the core (everything else) imports none of them.
OUTER = ("fastenv.bench", "fastenv.launch", "fastenv.cli", "fastenv.compat", "fastenv.demo", "fastenv.examples", "fastenv.__main__")
# The lowest layer: imports nothing of fastenv but its errors.
NATIVE = "fastenv.native"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The fastenv modules ``path`` imports (a ``from pkg import mod`` counts as ``pkg.mod`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: _imports(path, name, known) for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (ignoring imports of a module's own parent packages), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if node.startswith(target + "."):
                continue  # a submodule importing its package's __init__ (which imports it) is Python's normal order
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]


def _is_outer(name: str) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in OUTER)


@pytest.mark.parametrize("layer", ["core", "native"])
def test_imports_point_one_way(layer: str) -> None:
    graph = _graph()
    if layer == "core":
        wrong = {
            name: sorted(target for target in targets if _is_outer(target))
            for name, targets in graph.items()
            if not _is_outer(name) and name != "fastenv"
        }
    else:
        wrong = {NATIVE: sorted(target for target in graph[NATIVE] if target not in ("fastenv", "fastenv.errors"))}
    assert not {name: targets for name, targets in wrong.items() if targets}
