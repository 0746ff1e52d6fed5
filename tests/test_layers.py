"""Imports point down the flow of ../shared/DESIGN.md: no circles (not even through imports hidden
inside functions), the bottom floor imports nothing of the project, and components never import the
orchestration above them. Read from the source, so it costs no imports."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "automl"
# A sub-package is one node: its modules may import each other.
PACKAGES = ("extractors", "heads", "augment", "recipe", "service")
BOTTOM = {"errors", "registry", "_imports", "_files", "params", "seeds", "progress"}
COMPONENTS = {"extractors", "heads", "augment"}
ORCHESTRATION = {"pipeline", "search", "store", "runs", "api", "comparison", "report", "recipe", "pretrain"}


def _node(module: str) -> str | None:
    """``automl.extractors.keras`` -> ``extractors``; ``automl.cache`` -> ``cache``; others None."""
    parts = module.split(".")
    if parts[0] != "automl":
        return None
    if len(parts) == 1:
        return "automl"
    return parts[1]


def _imports(path: Path, module: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
            # ``from automl import api`` imports the module automl.api
            names += [f"automl.{a.name}" for a in node.names
                      if names[0] == "automl" and (PACKAGE / a.name).with_suffix(".py").exists()
                      or names[0] == "automl" and (PACKAGE / a.name).is_dir()]
        else:
            continue
        for name in names:
            target = _node(name)
            if target is not None and not (name == "automl" and isinstance(node, ast.ImportFrom)):
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        source = _node(module)
        edges.setdefault(source, set()).update(t for t in _imports(path, module) if t != source)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == "open":
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(edges):
        if n not in state:
            visit(n)
    return found


def test_no_import_circles():
    assert cycles(graph()) == []


def test_bottom_floor_imports_only_the_bottom_floor():
    edges = graph()
    for module in BOTTOM & set(edges):
        assert edges[module] <= BOTTOM, f"automl.{module} imports {sorted(edges[module] - BOTTOM)}"


def test_components_never_import_the_orchestration():
    edges = graph()
    for component in COMPONENTS:
        assert not edges[component] & ORCHESTRATION, \
            f"automl.{component} imports {sorted(edges[component] & ORCHESTRATION)}"


def test_only_the_command_line_imports_the_service():
    # The service sits on top of everything: a library module importing it would pull FastAPI and
    # the queue into every fit.
    importers = sorted(m for m, targets in graph().items() if "service" in targets and m != "service")
    assert importers == []


def test_the_checker_sees_circles_and_hidden_imports(tmp_path):
    # The checker itself must be able to fail: a circle through a function-level import.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from automl.pipeline import fit\n    from ..store import Store\n")
    assert _imports(module, "automl.heads.m") == {"pipeline", "store"}
