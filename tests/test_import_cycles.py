"""The vlmmerge package has no import cycles.

The import graph is read with ``ast`` (nothing is imported). An edge A -> B means that importing A
runs B's module code:

- counted: import statements that run while A loads: at module level, including those inside
  module-level ``if`` / ``try`` / ``with`` blocks and class bodies;
- not counted: imports inside functions (lazy imports). They run after every module has finished
  loading, so they cannot see a half-initialised module; that is what makes module-level cycles
  dangerous and lazy ones safe. They are allowed, though a lazy import that only dodges a cycle is
  still a design smell;
- not counted: imports under ``if TYPE_CHECKING:`` (never executed).

``from a.b import c`` points at ``a.b.c`` when that is a module of the package, else at ``a.b``.
Importing ``a.b.c`` also runs the ``__init__`` of each package above it, so those are edges too,
except the packages that contain A (they are already loading when A runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import vlmmerge

PACKAGE_ROOT = Path(vlmmerge.__file__).resolve().parent


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _all_imports(body: list[ast.stmt]):
    """Every import statement, lazy and TYPE_CHECKING ones included."""
    for stmt in body:
        yield from (n for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)))


def _load_time_imports(body: list[ast.stmt]):
    """Import statements executed when the module body runs (functions' bodies skipped)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _load_time_imports(node.body)
            yield from _load_time_imports(node.orelse)
        elif isinstance(node, ast.Try) or (hasattr(ast, "TryStar") and isinstance(node, ast.TryStar)):
            yield from _load_time_imports(node.body)
            for handler in node.handlers:
                yield from _load_time_imports(handler.body)
            yield from _load_time_imports(node.orelse)
            yield from _load_time_imports(node.finalbody)
        elif isinstance(node, (ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While, ast.ClassDef)):
            yield from _load_time_imports(node.body)
            yield from _load_time_imports(getattr(node, "orelse", []))


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: dict) -> set[str]:
    """The package modules an import statement names explicitly."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = importer.split(".") if is_package else importer.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    out = set()
    for name in names:
        while name and name not in modules:  # `import a.b.c` of a non-module attribute path
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def import_graph(root: Path, lazy: bool = False) -> dict[str, set[str]]:
    """Module -> modules it imports at load time (``lazy=True``: any import anywhere in it)."""
    modules = module_names(root)
    walk = _all_imports if lazy else _load_time_imports
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        parts = name.split(".")
        containing = {".".join(parts[:i]) for i in range(1, len(parts) + is_package)}
        edges: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in walk(tree.body):
            for target in _targets(node, name, is_package, modules):
                edges.add(target)
                above = target.split(".")
                edges.update(p for p in (".".join(above[:i]) for i in range(1, len(above)))
                             if p in modules and p not in containing)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the package is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def _cycle_path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One concrete loop through a component, e.g. 'a -> b -> a', for the failure message."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in members)
        back = [w for w in nxt if w in seen]
        if back:
            loop = path[path.index(back[0]):] + [back[0]]
            return " -> ".join(loop)
        path.append(nxt[0])
        seen.add(nxt[0])


def test_vlmmerge_has_no_import_cycles():
    graph = import_graph(PACKAGE_ROOT)
    assert "vlmmerge.evaluation.tasks" in graph and len(graph) > 50  # the walk saw the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (module-level imports):\n" + "\n".join(_cycle_path(graph, c) for c in cycles)


def test_evaluation_is_acyclic_even_counting_lazy_imports():
    """The evaluation package was untangled (task catalogue, data-only metric names, a scoring
    context without a Task, EvalResult saved by the report module): keep it so."""
    graph = import_graph(PACKAGE_ROOT, lazy=True)
    inside = {m: {t for t in e if t.startswith("vlmmerge.evaluation")} for m, e in graph.items()
              if m.startswith("vlmmerge.evaluation")}
    cycles = find_cycles(inside)
    assert not cycles, "cycles in vlmmerge.evaluation:\n" + "\n".join(_cycle_path(inside, c) for c in cycles)


def _write_package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text, encoding="utf-8")
    return pkg


def test_walker_finds_module_level_cycles_and_ignores_lazy_and_type_checking_imports(tmp_path):
    pkg = _write_package(tmp_path, {
        "a.py": "from pkg.b import thing\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import x\n"
                "try:\n    from . import a\nexcept ImportError:\n    pass\n",
        "c.py": "def f():\n    from pkg.d import y\n",
        "d.py": "import pkg.c\n",
        "sub/__init__.py": "from pkg.sub.e import z\n",
        "sub/e.py": "from pkg.sub import w\n",  # a module reading its own half-initialised package
        "f.py": "class K:\n    from pkg.g import q\n",
        "g.py": "from .f import K\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.a"}  # the TYPE_CHECKING import is not an edge
    assert graph["pkg.c"] == set()  # lazy import inside a function
    assert graph["pkg.d"] == {"pkg.c"}
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b"], ["pkg.f", "pkg.g"], ["pkg.sub", "pkg.sub.e"]]
    assert _cycle_path(graph, ["pkg.a", "pkg.b"]) == "pkg.a -> pkg.b -> pkg.a"
    assert ["pkg.c", "pkg.d"] in find_cycles(import_graph(pkg, lazy=True))


def test_importing_a_submodule_runs_the_packages_above_it(tmp_path):
    pkg = _write_package(tmp_path, {
        "x/__init__.py": "from pkg.y import helper\n",
        "x/inner.py": "",
        "y.py": "from pkg.x.inner import thing\n",  # runs pkg/x/__init__, which imports pkg.y
    })
    graph = import_graph(pkg)
    assert graph["pkg.y"] == {"pkg.x", "pkg.x.inner"}
    assert find_cycles(graph) == [["pkg.x", "pkg.y"]]
