"""The house rules on imports, checked on the source (AST), so a violation fails before it is ever run.

* No import circle among ``unlearn``, ``tasks`` and ``flows`` modules, counting imports made
  inside functions too: a lazy import hides a circle from the interpreter, not from a reader.
* No ``from X import _private`` across files: a helper two files share gets a public name in
  a module both import.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("unlearn", "tasks", "flows")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> tuple[set[str], list[str]]:
    """The project modules ``name`` imports, and the private names it takes from another module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets, private = set(), []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in known:  # `from package import module`
                    targets.add(f"{base}.{alias.name}")
                    continue
                targets.add(base)
                if alias.name.startswith("_") and base.split(".")[0] in PACKAGES and base != name:
                    private.append(f"{name} imports {alias.name} from {base}")
    return {t for t in targets if t in known and t != name}, private


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    graph, private = {}, []
    for name, path in modules.items():
        graph[name], found = _imports(name, path, set(modules))
        private += found
    return graph, private


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
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
                    cycles.append(sorted(component))
    return cycles


def test_the_checker_finds_a_circle_and_a_private_import(tmp_path, monkeypatch):
    """The checks themselves can fail: a planted circle and a planted private import are both reported."""
    checker = sys.modules[__name__]
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "tasks" / "a.py").write_text("def f():\n    from tasks.b import g\n")
    (tmp_path / "tasks" / "b.py").write_text("from . import a\n_h = 1\n")
    (tmp_path / "flows" / "c.py").write_text("from tasks.b import _h\n")
    monkeypatch.setattr(checker, "ROOT", tmp_path)
    graph, private = checker._graph()
    assert checker.find_cycles(graph) == [["tasks.a", "tasks.b"]]
    assert private == ["flows.c imports _h from tasks.b"]


def test_no_import_circle():
    graph, _ = _graph()
    assert len(graph) > 50  # the walk found the packages
    assert find_cycles(graph) == []


def test_no_private_name_is_imported_from_another_file():
    _, private = _graph()
    assert private == []
