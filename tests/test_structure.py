"""The package's import structure: no import cycle between knot's modules (counting the
imports inside functions too), none between its packages either (``knot.data`` and
``knot.federated`` counted as one node each), no module imports another module's private
name, and the shipped package holds no test configuration."""

from __future__ import annotations

import ast
from pathlib import Path

import knot

SRC = Path(knot.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ("knot",) + path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` of every import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for module, imported, _ in _imports(path):
            target = f"{module}.{imported}" if f"{module}.{imported}" in mods else module
            if target in mods and target != name:
                graph[name].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_find_cycle_sees_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_knot_modules():
    cycle = _find_cycle(_graph())

    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _package(module: str) -> str:
    """The top-level unit of a module: ``knot.data.readers`` -> ``knot.data``, ``knot.ot`` -> ``knot.ot``."""
    return ".".join(module.split(".")[:2])


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {_package(m): set() for m in graph}
    for m, targets in graph.items():
        out[_package(m)] |= {_package(t) for t in targets} - {_package(m)}
    return out


def test_package_graph_merges_subpackages():
    graph = {"knot.config": {"knot.data.readers"}, "knot.data.prepare": {"knot.config"}, "knot.data.readers": set()}

    assert _package_graph(graph) == {"knot.config": {"knot.data"}, "knot.data": {"knot.config"}}
    assert _find_cycle(_package_graph(graph)) == ["knot.config", "knot.data", "knot.config"]


def test_no_import_cycle_between_knot_packages():
    cycle = _find_cycle(_package_graph(_graph()))

    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle or [])


def test_the_shipped_package_has_no_conftest():
    assert sorted(p.relative_to(SRC) for p in SRC.rglob("conftest.py")) == []


def test_no_module_imports_another_modules_private_name():
    offenders = [
        f"{path.relative_to(SRC.parent)}:{line}: from {module} import {name}"
        for path in _modules().values()
        for module, name, line in _imports(path)
        if module.startswith("knot") and name and name.startswith("_") and not name.startswith("__")
    ]

    assert offenders == []
