"""No import cycle between the modules of dffs: imports go down the layers of docs/architecture.md, never back up.

Static, from the source with ``ast``: every ``import dffs...`` and ``from dffs... import`` counts, at the top of a
module or inside a function (an import moved into a function to dodge a cycle is still a cycle in the design),
except those under ``if TYPE_CHECKING:``, which never run. A package's ``__init__`` stands for the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "dffs"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, skipping the body of ``if TYPE_CHECKING:`` (not its ``else``)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports_in(other)
            continue
        yield from _imports_in(child)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _imports(node)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first such import}, for the modules of ``package`` under ``root``."""
    files = {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}
    modules = set(files)

    def resolve(name: str) -> str | None:
        """The module ``name`` is, or the nearest enclosing module of ``package`` that exists."""
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    graph: dict[str, dict[str, int]] = {}
    for importer, path in files.items():
        edges: dict[str, int] = {}
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _absolute(node, importer, is_package)
                # ``from dffs.x import y`` is module dffs.x.y when that is a module, else dffs.x itself.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            for target in targets:
                if target != package and not target.startswith(package + "."):
                    continue
                resolved = resolve(target)
                if resolved is not None and resolved != importer:
                    edges.setdefault(resolved, node.lineno)
        graph[importer] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, {})))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
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
    return sorted(found)


def describe(graph: dict[str, dict[str, int]], root: Path) -> list[str]:
    lines = []
    for component in strongly_connected(graph):
        members = set(component)
        lines.append("cycle: " + ", ".join(component))
        for importer in component:
            for target, line in sorted(graph[importer].items()):
                if target in members:
                    path = importer.replace(".", "/")
                    path += "/__init__.py" if (root / path).is_dir() else ".py"
                    lines.append(f"  {importer} -> {target}  ({path}:{line})")
    return lines


def test_dffs_has_no_import_cycles():
    report = describe(import_graph(ROOT, PACKAGE), ROOT)
    assert not report, "import cycles between dffs modules:\n" + "\n".join(report)


# -- the checker itself, on a small tree of its own ------------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_finds_a_lazy_import_cycle_and_names_its_edges(tmp_path):
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "def f():\n    from pkg.c import thing\n",
            "pkg/c.py": "import pkg.a\n",
            "pkg/d.py": "from pkg.a import x\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert strongly_connected(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert "  pkg.b -> pkg.c  (pkg/b.py:2)" in describe(graph, root)


def test_checker_ignores_type_checking_imports_and_resolves_packages(tmp_path):
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.sub import y\n",
            "pkg/sub/__init__.py": "from . import leaf\n",
            "pkg/sub/leaf.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg import sub\n"
                "import typing\nif typing.TYPE_CHECKING:\n    import pkg\n"
            ),
            "pkg/other.py": "from . import sub\nfrom .sub.leaf import z\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg"] == {"pkg.sub": 1}
    assert graph["pkg.sub"] == {"pkg.sub.leaf": 1}
    assert graph["pkg.sub.leaf"] == {}
    assert graph["pkg.other"] == {"pkg.sub": 1, "pkg.sub.leaf": 2}
    assert strongly_connected(graph) == []
