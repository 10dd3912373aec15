"""The house's floors, read from the code's own imports: dependencies point one way.

- the ledger is the bottom floor: it imports nothing of MetaClaw above it but `config`;
- the proxy never imports flows, tasks or training (it must start fast and never train);
- the library (`metaclaw/`) never imports Prefect, flows or tasks;
- no two modules import each other, directly or through others (lazy imports count too: a
  cycle hidden in a function is still a cycle).
Every import statement counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO

PACKAGES = ("metaclaw", "flows", "tasks")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (`from a import b` counts as a.b if a.b is one)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in files and m != name}
        for name, path in files.items()
    }


def _within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _external_imports(prefix: str) -> Iterator[tuple[str, str]]:
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            name = _module_name(path)
            if _within(name, prefix):
                yield from ((name, m) for m in _imports(path))


def test_the_ledger_imports_nothing_above_it() -> None:
    upward = sorted(
        {
            (m, d)
            for m, d in _external_imports("metaclaw.ledger")
            if _within(d, "metaclaw") and not _within(d, "metaclaw.ledger", "metaclaw.config")
        }
    )
    assert upward == [], f"the ledger imports layers above it: {upward}"


def test_the_proxy_imports_no_flows_tasks_or_training() -> None:
    upward = sorted(
        {
            (m, d)
            for m, d in _external_imports("metaclaw.proxy")
            if _within(d, "flows", "tasks", "metaclaw.training", "prefect")
        }
    )
    assert upward == [], f"the proxy imports {upward}"


def test_the_library_never_imports_prefect_flows_or_tasks() -> None:
    upward = sorted(
        {
            (m, d)
            for m, d in _external_imports("metaclaw")
            if _within(d, "flows", "tasks", "prefect")
        }
    )
    assert upward == [], f"metaclaw/ imports orchestration: {upward}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert _cycles(import_graph()) == []
