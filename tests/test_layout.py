"""The package's shape, checked by reading the source (never importing it).

- No import cycles between modules.
- Layers: each subpackage has a layer (LAYERS); a module imports only its own package and
  packages of lower layers, so serving and training never import the command line, and the
  model never imports training. A sideways import (serving -> interop) is a violation too.
- Nothing directly in lm/ but __init__.py and config.py; no module named like a standard
  library module (an `inspect.py` shadows `inspect` for scripts run from its directory).
- A function-level import of an lm module says why, in a comment on its line or the line
  above (a late import is still a dependency; the reader should see the reason for hiding it).
- No module uses another module's private names (`mod._name`, `from mod import _name`, or
  `obj._attr` on anything but self/cls).
- No function is 80 lines or longer.

Every checker runs on synthetic packages too, so each is shown to fail.

Imports are parsed with `ast`, module- and function-level alike. Relative imports are resolved
against the importing module's package; `from pkg import name` is an edge to `pkg.name` when
that is a module, else to `pkg`. Imports under `if TYPE_CHECKING:` are skipped: they never run.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent

# Lower layers never import higher ones; a package imports only itself and lower layers.
LAYERS = {
    "lm.config": 0,
    "lm.util": 1,
    "lm.hardware": 2,
    "lm.data": 2,
    "lm.model": 3,
    "lm.training": 4,
    "lm.inference": 5,
    "lm.serving": 6,
    "lm.interop": 6,
    "lm.scaling": 6,
    "lm.cli": 7,
}
# Upward imports the layering allows, each with its reason.
ALLOWED_UP = {
    ("lm.config", "lm.data.sources"): "validating data.source asks the source kind itself "
    "(a file exists, a task's keys fit); lazy, so lm.config imports first",
}
LONGEST_FUNCTION = 80  # lines, exclusive
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}  # NamedTuple


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
    """(import node, inside a function) for every import in `tree`, less TYPE_CHECKING ones."""
    stack = [(tree, False)]
    while stack:
        node, in_fn = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, in_fn
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((n, in_fn) for n in node.orelse)
            continue
        inner = in_fn or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        stack.extend((n, inner) for n in ast.iter_child_nodes(node))


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted `name` that is one of `modules`."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in modules:
            return prefix
    return None


class Edge(NamedTuple):
    src: str  # importing module
    dst: str  # imported module
    line: int
    late: bool  # inside a function
    commented: bool  # a comment on the import's lines or the line above


def _commented(lines: list[str], node: ast.stmt, import_lines: set[int]) -> bool:
    """A comment on the import's own lines, or on the line above it or above the run of
    imports it belongs to (one reason may head a block of late imports)."""
    first, last = node.lineno - 1, node.end_lineno - 1
    if any("#" in lines[i] for i in range(first, last + 1)):
        return True
    above = first - 1
    while above >= 0 and (above in import_lines or not lines[above].strip()):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


def edges(root: Path, package: str) -> list[Edge]:
    """Every import of one of `package`'s modules by another of them."""
    modules = module_names(root, package)
    out = []
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        found = list(_imports(ast.parse(text, filename=str(path))))
        import_lines = {i for n, _ in found for i in range(n.lineno - 1, n.end_lineno)}
        for node, late in found:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    pkg = ".".join(base + ([node.module] if node.module else []))
                else:
                    pkg = node.module or ""
                targets = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in modules else pkg
                           for a in node.names]  # fmt: skip
            for t in targets:
                dep = _owner(t, modules)
                if dep is not None and dep != mod:
                    out.append(
                        Edge(mod, dep, node.lineno, late, _commented(lines, node, import_lines))
                    )
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {m: set() for m in module_names(root, package)}
    for e in edges(root, package):
        graph[e.src].add(e.dst)
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


def layer_of(module: str, layers: dict[str, int]) -> tuple[str, int] | None:
    """(the package of `layers` that holds `module`, its layer), the longest match."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in layers:
            return prefix, layers[prefix]
    return None


def layer_violations(es: list[Edge], layers: dict[str, int], allowed=ALLOWED_UP) -> list[str]:
    """Imports of a higher layer, or sideways into another package of the same layer."""
    out = []
    for e in es:
        src, dst = layer_of(e.src, layers), layer_of(e.dst, layers)
        if src is None or dst is None or src[0] == dst[0] or (e.src, e.dst) in allowed:
            continue
        if dst[1] >= src[1]:
            way = "up" if dst[1] > src[1] else "sideways"
            out.append(f"{e.src}:{e.line} imports {e.dst} ({way}: layer {src[1]} -> {dst[1]})")
    return sorted(out)


def unexplained_late_imports(es: list[Edge]) -> list[str]:
    return sorted(f"{e.src}:{e.line} imports {e.dst} inside a function without a comment "
                  "saying why" for e in es if e.late and not e.commented)  # fmt: skip


def private_names(root: Path, package: str) -> set[str]:
    """Every private name `package` defines: module-level functions, classes and assignments,
    methods and class attributes, and attributes set on self."""
    out = set()
    for path in module_names(root, package).values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                out.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                out.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                out.add(node.attr)
    return {n for n in out if _private(n)}


def private_uses(root: Path, package: str, dirs: tuple[str, ...] = ()) -> list[str]:
    """Uses of another module's private names in `package` and `dirs`: `from m import _x`, and
    `obj._x` on anything but self and cls where `_x` is a name `package` defines (another
    library's private API, such as argparse's, is its own business)."""
    ours = private_names(root, package)
    files = list(module_names(root, package).values())
    files += [p for d in dirs for p in sorted((root / d).rglob("*.py"))]
    out = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(root)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package):
                out += [f"{where}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names if _private(a.name)]  # fmt: skip
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in ours
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                out.append(f"{where}:{node.lineno} uses {ast.unparse(node)}")
    return sorted(out)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE


def long_functions(root: Path, package: str, limit: int = LONGEST_FUNCTION) -> list[str]:
    out = []
    for path in module_names(root, package).values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n >= limit:
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {n} lines")
    return sorted(out)


def misplaced_modules(root: Path, package: str, top: frozenset[str]) -> list[str]:
    """Modules directly in the package but `top`, and modules named like the standard library."""
    out = [f"{p.name} directly in {package}/" for p in sorted((root / package).glob("*.py"))
           if p.name not in top]  # fmt: skip
    for name, path in module_names(root, package).items():
        base = name.rsplit(".", 1)[-1]
        if base in sys.stdlib_module_names and path.name != "__init__.py":
            out.append(f"{path.relative_to(root)} shadows the standard library's {base}")
    return out


# ---------------------------------------------------------------- the package itself

LM_EDGES = edges(ROOT, "lm")


def test_lm_has_no_import_cycles():
    graph = import_graph(ROOT, "lm")
    assert "lm.cli" in graph and graph["lm.cli"], "the parser found no lm modules or imports"
    comps = cycles(graph)
    assert not comps, "import cycles in lm:\n" + describe(graph, comps)


def test_every_lm_package_has_a_layer():
    packages = {m for m in module_names(ROOT, "lm") if m.count(".") == 1}
    packages = {m for m in packages if (ROOT / m.replace(".", "/")).is_dir()} | {"lm.config"}
    assert packages == set(LAYERS)


def test_lm_imports_follow_the_layers():
    bad = layer_violations(LM_EDGES, LAYERS)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_lm_late_imports_say_why():
    bad = unexplained_late_imports(LM_EDGES)
    assert not bad, "\n".join(bad)


def test_no_module_uses_another_modules_private_names():
    bad = private_uses(ROOT, "lm", ("tests", "benchmarks", "experiments"))
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_functions_are_shorter_than_80_lines():
    bad = long_functions(ROOT, "lm")
    assert not bad, "\n".join(bad)


def test_lm_top_level_holds_only_init_and_config():
    bad = misplaced_modules(ROOT, "lm", frozenset({"__init__.py", "config.py"}))
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- the checkers can fail


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


def test_layer_checker_fails_upward_and_sideways_imports(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low/__init__.py": "",
            "pkg/low/a.py": "def f():\n    from pkg.high import b  # why: a reason\n",
            "pkg/high/__init__.py": "",
            "pkg/high/b.py": "from pkg.low import a\nfrom pkg.side import c\n",
            "pkg/side/__init__.py": "",
            "pkg/side/c.py": "from pkg.low.a import f\n",
            "pkg/top/__init__.py": "",
            "pkg/top/d.py": "from pkg.high import b\nfrom pkg.low import a\n",
        },
    )
    layers = {"pkg.low": 0, "pkg.high": 1, "pkg.side": 1, "pkg.top": 2}
    es = edges(tmp_path, "pkg")
    assert layer_violations(es, layers, allowed={}) == [
        "pkg.high.b:2 imports pkg.side.c (sideways: layer 1 -> 1)",
        "pkg.low.a:2 imports pkg.high.b (up: layer 0 -> 1)",
    ]
    assert layer_violations(es, layers, allowed={("pkg.low.a", "pkg.high.b"): "why"}) == [
        "pkg.high.b:2 imports pkg.side.c (sideways: layer 1 -> 1)"
    ]
    assert unexplained_late_imports(es) == []  # the late import above has its comment


def test_late_import_checker_wants_a_comment(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "X = 1\n",
            "pkg/b.py": (
                "def f():\n    from pkg import a\n\n"
                "def g():\n    # the reason, above\n    from pkg import a\n\n"
                "def h():\n    from pkg.a import (  # the reason, on the line\n        X,\n    )\n"
                "def k():\n    # one reason for the block\n    from pkg import a\n\n"
                "    import pkg.a\n"
                "    y = 1\n    from pkg.a import X\n"
                "from pkg import a\n"  # module level: no comment needed
            ),
        },
    )
    assert unexplained_late_imports(edges(tmp_path, "pkg")) == [
        "pkg.b:18 imports pkg.a inside a function without a comment saying why",
        "pkg.b:2 imports pkg.a inside a function without a comment saying why",
    ]


def test_private_name_checker(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "_hidden = 1\n\nclass T:\n    def __init__(self):\n        self._x = 0\n",
            "pkg/b.py": (
                "from pkg.a import _hidden\nfrom pkg import a\n\n"
                "def f(tok, nt, parser):\n"
                "    return a._hidden, tok._x, nt._replace(x=1), a.__name__, parser._actions\n"
            ),
        },
    )
    assert private_uses(tmp_path, "pkg") == [
        "pkg/b.py:1 imports pkg.a._hidden",
        "pkg/b.py:5 uses a._hidden",
        "pkg/b.py:5 uses tok._x",
    ]


def test_long_function_and_misplaced_module_checkers(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(79))
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/config.py": "def short():\n" + body[: len(body) // 2],
            "pkg/loose.py": "def long():\n" + body,
            "pkg/sub/__init__.py": "",
            "pkg/sub/inspect.py": "",
        },
    )
    assert long_functions(tmp_path, "pkg") == ["pkg/loose.py:1 long: 80 lines"]
    assert misplaced_modules(tmp_path, "pkg", frozenset({"__init__.py", "config.py"})) == [
        "loose.py directly in pkg/",
        "pkg/sub/inspect.py shadows the standard library's inspect",
    ]
