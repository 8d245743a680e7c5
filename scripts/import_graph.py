"""lcc's imports of its own modules, read from the source (stdlib ``ast``; nothing is imported).

    python scripts/import_graph.py            # the report: cycles, function-level imports, layer violations
    python scripts/import_graph.py --edges    # also every import of an lcc module, per module

An import is *module-level* when it runs on import of its module (top level, class bodies, ``try``/``if``
blocks at top level) and *function-level* when it sits in a function. ``if TYPE_CHECKING:`` imports never run
and are left out. ``from lcc.a import b`` is an edge to ``lcc.a.b`` when that is a module, else to ``lcc.a``. A
package whose ``__init__`` discovers its modules (``importlib.import_module`` at import time: ``lcc.compressors``,
``lcc.tasks``) imports each of them (line 0).

Layers (``LAYERS``): a module may import its own layer and the layers below it, never a higher one.
``tests/test_imports.py`` fails on an import cycle among lcc's modules (module-level imports) and on an import
that goes up the layers.
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "lcc"

#: the layers, lowest first (issue 17: config and validation -> data and models -> compressors and metrics ->
#: tasks -> job -> sweep, reduce). A module belongs to the layer of the longest entry naming it or a package above
#: it (``lcc.cache`` covers ``lcc.cache.dense``, ``lcc.cache.store`` is named on its own); ``lcc`` names only the
#: package's ``__init__`` (``ConfigError``, ``versions``). ``lcc.validate`` keeps the rules that span config
#: groups and is imported by the job and the sweep only; ``lcc.logger`` logs every job's result (``lcc.job``
#: calls it), so it sits with the job, below reduce and the dashboard, which log and read runs too.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("config and validation", ("lcc", "lcc.registry", "lcc.io", "lcc.checks", "lcc.config")),
    ("data and models", ("lcc.data", "lcc.models", "lcc.archs", "lcc.checkpoints", "lcc.cache.store",
                         "lcc.cache.keys")),
    ("compressors and metrics", ("lcc.compressors", "lcc.metrics", "lcc.forward", "lcc.coverage",
                                 "lcc.names", "lcc.cache")),
    ("tasks", ("lcc.context", "lcc.tasks")),
    ("job", ("lcc.job", "lcc.validate", "lcc.logger")),
    ("sweep, reduce", ("lcc.sweep", "lcc.reduce", "lcc.outputs", "lcc.figures", "lcc.press_report",
                       "lcc.result_schema", "lcc.dashboard", "lcc.conformance")),
]


@dataclass(frozen=True)
class Import:
    src: str      # the importing module
    dst: str      # the imported lcc module
    line: int
    function: bool  # inside a function (runs on call, not on import)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The lcc modules one import statement names."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            parent = ".".join(base + ([node.module] if node.module else []))
        else:
            parent = node.module or ""
        names = [f"{parent}.{a.name}" if f"{parent}.{a.name}" in known else parent for a in node.names]
    out = []
    for name in names:
        while name and name not in known:  # import lcc.a.b.attr -> the longest known module
            name = name.rpartition(".")[0]
        if name and name.split(".")[0] == PACKAGE and name not in out:
            out.append(name)
    return out


def imports(root: Path = ROOT) -> list[Import]:
    """Every import of an lcc module by an lcc module (one per statement and target)."""
    mods = modules(root)
    known = set(mods)
    out: list[Import] = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"

        def walk(node: ast.AST, function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child.test):
                    for c in child.orelse:
                        walk(ast.Module(body=[c], type_ignores=[]), function)
                    continue
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for dst in _targets(child, name, is_package, known):
                        if dst != name:
                            out.append(Import(name, dst, child.lineno, function))
                walk(child, function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        walk(tree, False)
        if is_package and _discovers(tree):  # importlib.import_module of every module of the package
            out += [Import(name, m, 0, False) for m in sorted(mods)
                    if m.rpartition(".")[0] == name and not m.endswith(".__main__")]
    return out


def _discovers(tree: ast.Module) -> bool:
    """Whether a package's ``__init__`` imports its modules by name at import time (``lcc.compressors``,
    ``lcc.tasks``: ``importlib.import_module`` in a top-level loop)."""
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "import_module"
               for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
               for n in ast.walk(stmt))


def graph(edges: list[Import], function_level: bool = False) -> dict[str, set[str]]:
    """module -> the lcc modules it imports (module-level imports; all of them with ``function_level``)."""
    g: dict[str, set[str]] = {}
    for e in edges:
        if function_level or not e.function:
            g.setdefault(e.src, set()).add(e.dst)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan), largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
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
    sys.setrecursionlimit(max(limit, 10 * len(g) + 100))
    try:
        for v in sorted(g):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(out, key=lambda c: (-len(c), c))


def _covers(entry: str, module: str) -> bool:
    return module == entry or (entry != PACKAGE and module.startswith(entry + "."))


def layer_of(module: str, layers: list = LAYERS) -> int:
    """The index in ``layers`` of a module (the layer of its longest entry); KeyError if none names it."""
    best = max(((len(e), i) for i, (_, entries) in enumerate(layers) for e in entries if _covers(e, module)),
               default=None)
    if best is None:
        raise KeyError(f"{module} is in no layer of scripts/import_graph.py's LAYERS")
    return best[1]


def unplaced(mods=None, layers: list = LAYERS) -> list[str]:
    """Modules that no layer names."""
    return sorted(m for m in (mods if mods is not None else modules())
                  if not any(_covers(e, m) for _, entries in layers for e in entries))


def violations(edges: list[Import], layers: list = LAYERS) -> list[Import]:
    """Imports that go up the layers (any import, module- or function-level)."""
    return [e for e in edges if layer_of(e.dst, layers) > layer_of(e.src, layers)]


def own_function_level(edges: list[Import]) -> list[Import]:
    """Function-level imports of lcc's own modules."""
    return [e for e in edges if e.function]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", action="store_true", help="list every import of an lcc module, per module")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout to read (default: this one)")
    args = ap.parse_args(argv)
    edges = imports(args.root)
    mods = modules(args.root)
    if args.edges:
        for m in mods:
            mine = [e for e in edges if e.src == m]
            if mine:
                print(m)
                for e in mine:
                    print(f"    {'function' if e.function else 'module  '}  {e.dst}  (line {e.line})")
    for label, g in (("module-level imports", graph(edges)), ("all imports", graph(edges, function_level=True))):
        cyc = cycles(g)
        print(f"cycles counting {label}: {len(cyc)} ({sum(map(len, cyc))} modules)")
        for c in cyc:
            print(f"    {len(c)}: {' '.join(c)}")
    fl = own_function_level(edges)
    print(f"function-level imports of lcc modules: {len(fl)}")
    for e in fl:
        print(f"    {e.src}:{e.line} -> {e.dst}")
    if (lost := unplaced(mods)):
        print(f"modules in no layer: {' '.join(lost)}")
        return 1
    up = violations(edges)
    print(f"imports up the layers: {len(up)}")
    for e in up:
        print(f"    {e.src}:{e.line} ({LAYERS[layer_of(e.src)][0]}) -> {e.dst} ({LAYERS[layer_of(e.dst)][0]})"
              f"{'  [function]' if e.function else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
