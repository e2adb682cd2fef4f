"""House rules of the package's source, checked on its syntax trees (no imports run).

One home for each piece of knowledge: an object's `_private` state is touched
only by its own code, and the modules import one another without a circle.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "iommu_core"

# (module, attribute) pairs still allowed, each with the reason; none today.
KNOWN_PRIVATE_ACCESS: set[tuple[str, str]] = set()


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()


def _private_accesses(tree: ast.Module):
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        yield node.lineno, ast.unparse(node), name


def test_no_module_touches_another_objects_private_attributes():
    found, used_exceptions = [], set()
    for module, tree in MODULES.items():
        for line, text, name in _private_accesses(tree):
            if (module, name) in KNOWN_PRIVATE_ACCESS:
                used_exceptions.add((module, name))
                continue
            found.append(f"{module}:{line}: {text}")
    assert not found, "private attributes of other objects:\n" + "\n".join(found)
    assert used_exceptions == KNOWN_PRIVATE_ACCESS, \
        f"known exceptions no longer needed: {sorted(KNOWN_PRIVATE_ACCESS - used_exceptions)}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(body: list[ast.stmt]):
    """Import statements that run when the module is imported (not those in functions)."""
    for stmt in body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            yield stmt
        elif isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from _top_level_imports(stmt.body)
            yield from _top_level_imports(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, *(h.body for h in stmt.handlers), stmt.orelse, stmt.finalbody):
                yield from _top_level_imports(block)


def _imported(module: str, stmt: ast.stmt) -> set[str]:
    """Modules of the package a module-level import statement names."""
    if isinstance(stmt, ast.Import):
        names = [a.name for a in stmt.names]
        return {n for n in names if n in MODULES}
    if stmt.level:
        package = module if _is_package(module) else module.rpartition(".")[0]
        for _ in range(stmt.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{stmt.module}" if stmt.module else package
    else:
        base = stmt.module
    out = set()
    for alias in stmt.names:
        sub = f"{base}.{alias.name}"
        if sub in MODULES:
            out.add(sub)            # from pkg import module
        elif base in MODULES:
            out.add(base)
    return out


def import_graph(deferred: bool = False) -> dict[str, set[str]]:
    """Module -> modules of the package it imports; deferred: count imports inside functions too."""
    def stmts(tree):
        if deferred:
            return (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        return _top_level_imports(tree.body)
    return {m: set().union(*(_imported(m, s) for s in stmts(tree))) - {m} for m, tree in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert graph["iommu_core.pgtable.table"] >= {"iommu_core.pgtable.format", "iommu_core.pgtable.descriptors"}
    cycle = _cycle(graph)
    assert cycle is None, "module-level imports form a circle: " + " -> ".join(cycle)


# Circles closed only by an import inside a function (deferred to break the circle at
# import time), each with the reason; none today.
KNOWN_DEFERRED_CYCLES: set[frozenset[str]] = set()


def test_no_circle_hides_behind_an_import_in_a_function():
    graph = import_graph(deferred=True)
    seen = set()
    while (cycle := _cycle(graph)) is not None:
        assert frozenset(cycle) in KNOWN_DEFERRED_CYCLES, \
            "imports (some inside functions) form a circle: " + " -> ".join(cycle)
        seen.add(frozenset(cycle))
        graph[cycle[-2]].discard(cycle[-1])
    assert seen == KNOWN_DEFERRED_CYCLES, f"known circles no longer there: {KNOWN_DEFERRED_CYCLES - seen}"


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.parametrize("cls_path", ["iommu_core.pgtable.table.PageTable",
                                      "iommu_core.pgtable.reference.ReferencePageTable"])
def test_both_tables_provide_the_shared_ops(cls_path):
    import importlib

    from iommu_core.pgtable.ops import TableOps
    module, _, name = cls_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls("ipmmu-s1-39"), TableOps)
    for op, declared in vars(TableOps).items():
        if op.startswith("_") or not inspect.isfunction(declared):
            continue
        want = list(inspect.signature(declared).parameters.values())
        have = list(inspect.signature(getattr(cls, op)).parameters.values())
        # the declared parameters first, same names and defaults; any others optional
        assert [(q.name, q.default) for q in have[: len(want)]] == [(q.name, q.default) for q in want], op
        assert all(q.default is not q.empty for q in have[len(want):]), op


def test_the_readme_layout_names_every_module_and_package_of_the_package():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```", 2)[1]
    root = Path(__file__).resolve().parent.parent / "iommu_core"
    top = sorted(p.name for p in root.iterdir() if (p.suffix == ".py" and p.name != "__init__.py")
                 or (p.is_dir() and (p / "__init__.py").exists()))
    missing = [name for name in top if f"iommu_core/{name}" not in layout]
    assert not missing, f"README's layout does not name {missing}"


def test_no_module_imports_another_modules_private_names():
    found = [f"{name}: from {node.module or '.'} import {alias.name}"
             for name, tree in MODULES.items() for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not found, found
