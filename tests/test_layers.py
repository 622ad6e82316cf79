"""The house's shape, held by tests: layers import only downward, no import circles, no private names borrowed
across modules, and every import left inside a function says why (start-up speed or an optional package)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
from conftest import REPO

PACKAGE = REPO / "dlcli"
LAYERS = ["commands", "reports", "config", "engine", "data", "models", "base"]


def test_import_linter_contracts_hold(monkeypatch):
    """pyproject.toml's [tool.importlinter]: the layers (exhaustive), acyclic siblings, private modules."""
    from importlinter.cli import lint_imports

    monkeypatch.chdir(REPO)
    assert lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_the_contract_names_every_layer_folder():
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert folders == sorted(LAYERS)
    assert LAYERS == ["commands", "reports", "config", "engine", "data", "models", "base"], \
        "update pyproject.toml's contract and the README's Development section together with this list"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over every import (in functions too)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    modules = sorted(m for m in graph.modules if m.startswith("dlcli"))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v)):
            if w == "dlcli" or not w.startswith("dlcli."):
                continue  # the root package holds only __version__
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    return found


def test_no_import_circles_between_any_two_modules():
    graph = grimp.build_graph("dlcli", cache_dir=None)
    assert _cycles(graph) == []
    # the check itself finds a circle when there is one
    graph.add_import(importer="dlcli.base.errors", imported="dlcli.commands.cli")
    assert any("dlcli.base.errors" in c for c in _cycles(graph))


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dlcli"):
                offenders += [f"{path.relative_to(REPO)}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


def unexplained_imports_in_functions(path: Path) -> list[str]:
    """Imports inside functions whose line, or the comment line opening their block of imports, gives no reason."""
    lines = path.read_text().splitlines()
    out = []
    for fn in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in fn.body if isinstance(fn.body, list) else []:
            for inner in ast.walk(node):
                if not isinstance(inner, (ast.Import, ast.ImportFrom)):
                    continue
                i = inner.lineno - 1
                while i > 0 and (lines[i - 1].strip().startswith(("from ", "import ")) or not lines[i - 1].strip()) \
                        and "#" not in lines[i]:
                    i -= 1  # up the block of imports (blank lines included) this one belongs to
                if "#" not in lines[inner.lineno - 1] and "#" not in lines[i] \
                        and not lines[i - 1].strip().startswith("#"):
                    out.append(f"{path.name}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    return sorted(set(out))


def test_imports_inside_functions_say_why():
    assert [line for p in _sources() for line in unexplained_imports_in_functions(p)] == []


def test_the_unexplained_import_check_sees_one(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import json\n    return json\n\n\ndef g():\n    # lazy: why\n    import json\n"
                     "    import csv\n    return json, csv\n")
    assert unexplained_imports_in_functions(probe) == ["probe.py:2: import json"]
