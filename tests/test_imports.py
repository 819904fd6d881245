"""No import cycles in the `lm` package.

Every module under lm/ is parsed (never imported) and each import becomes an edge of a graph:
module-level and function-level imports alike, since a function-level import is still a
dependency, only a late one. Relative imports are resolved against the importing module's
package; `from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg`.
Imports under `if TYPE_CHECKING:` are skipped: they never run. A cycle is a strongly connected
component of more than one module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """`package`'s modules, dotted name -> file, for the package directory `root/package`."""
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node in `tree`, at any depth, less those under TYPE_CHECKING."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted `name` that is one of `modules`."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in modules:
            return prefix
    return None


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (anywhere in its body)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    pkg = ".".join(base + ([node.module] if node.module else []))
                else:
                    pkg = node.module or ""
                for a in node.names:
                    sub = f"{pkg}.{a.name}"
                    targets.append(sub if sub in modules else pkg)
            for t in targets:
                dep = _owner(t, modules)
                if dep is not None and dep != mod:
                    graph[mod].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(out)


def describe(graph: dict[str, set[str]], comps: list[list[str]]) -> str:
    """Each cycle's modules and, for each, what it imports within the cycle."""
    lines = []
    for comp in comps:
        lines.append(f"cycle of {len(comp)} modules:")
        members = set(comp)
        for m in comp:
            lines.append(f"  {m} -> {', '.join(sorted(graph[m] & members))}")
    return "\n".join(lines)


def test_lm_has_no_import_cycles():
    graph = import_graph(ROOT, "lm")
    assert "lm.cli" in graph and graph["lm.cli"], "the parser found no lm modules or imports"
    comps = cycles(graph)
    assert not comps, "import cycles in lm:\n" + describe(graph, comps)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_checker_reports_a_cycle(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",  # the submodule pkg.b, not the package
            "pkg/b.py": "def f():\n    from .sub import c\n",  # function-level, relative
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "import pkg.a\n",
            "pkg/leaf.py": "from pkg.a import X\nimport os\n",  # pkg.a, outside the cycle
            "pkg/typed.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg import leaf\n"
                "else:\n    from . import a\n"
            ),
            "pkg/selfish.py": "from pkg import selfish\n",  # a self-import is no cycle
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert graph["pkg.leaf"] == {"pkg.a"}
    assert graph["pkg.typed"] == {"pkg.a"}  # the TYPE_CHECKING branch skipped, its else kept
    assert graph["pkg.selfish"] == set()
    comps = cycles(graph)
    assert comps == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert "pkg.b -> pkg.sub.c" in describe(graph, comps)


def test_checker_passes_an_acyclic_package(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            "pkg/a.py": "from . import b\n",
            "pkg/b.py": "import json\n",
        },
    )
    assert cycles(import_graph(tmp_path, "pkg")) == []
