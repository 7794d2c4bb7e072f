"""The layers are one-way: no import cycle between `cai` modules, none between its subpackages taken as
one node each, and only the CLI imports a plugin package (the rest reaches plugins through `cai.plugins`).
Every import statement counts, top level or inside a function (and under `if TYPE_CHECKING:`), read from the
source with `ast`."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PKG = "cai"
PLUGINS = ("cai.rbr", "cai.labels", "cai.batch", "cai.cluster", "cai.report", "cai.review")


def _is_cli(module: str) -> bool:
    """The command line: it may import a plugin's commands."""
    return module in ("cai.cli", "cai.__main__") or module.startswith("cai.cli.")


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _package_dir() -> Path:
    spec = importlib.util.find_spec(PKG)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the package (a package is its `__init__.py`)."""
    root = _package_dir()
    mods = {}
    for f in sorted(root.rglob("*.py")):
        parts = [PKG, *f.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = f
    return mods


def _imported_names(name: str, path: Path) -> list[str]:
    """Dotted names that the file imports anywhere (for `from a import b`, both `a.b` and `a`)."""
    is_pkg = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: strip `level` trailing parts (a package's own name counts as one)
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names += [f"{base}.{a.name}" for a in node.names] + [base]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.append(node.args[0].value)  # importlib.import_module("cai.x") is an import too
    return names


def _resolve(target: str, mods: dict[str, Path]) -> str | None:
    """The package's module that `target` names (its longest known prefix); None outside the package.
    The package root itself is left out: `from cai import __version__` is not a layer."""
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target if target and target != PKG else None


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports. A module importing its own parent package, and a
    package's `__init__` importing its own submodules, are not edges (Python does both implicitly)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for t in _imported_names(m, path):
            r = _resolve(t, mods)
            if r is None or r == m or m.startswith(r + "."):
                continue
            if path.name == "__init__.py" and r.startswith(m + "."):
                continue
            graph[m].add(r)
    return graph


def fold(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Each subpackage (cai.rbr.*, cai.providers.*) as one node; top-level modules stay themselves."""
    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        out.setdefault(top(m), set()).update(top(t) for t in targets if top(t) != top(m))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    assert "cai.rbr.reward" in graph["cai.cli.rbr"]  # `from cai.rbr.reward import load_weights` in a command
    assert "cai.api" in graph["cai.cli.commands"]  # imported inside `cai run`


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles(fold({"cai.x": {"cai.p.a"}, "cai.p.b": {"cai.x"}, "cai.p.a": set()})) == [["cai.p", "cai.x"]]


def test_no_cycle_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_no_cycle_between_subpackages() -> None:
    assert cycles(fold(import_graph())) == []


def test_only_the_cli_imports_a_plugin() -> None:
    """The core and the library API reach plugins by name through the registry (`cai.plugins`); nothing but the
    CLI and the plugins themselves imports a plugin package or Ray."""
    mods = _modules()
    core = [m for m in mods if not _in(m, PLUGINS) and not _is_cli(m)]
    assert {"cai.core.pipeline", "cai.runs", "cai.read.export", "cai.api", "cai.core.scoring",
            "cai.providers.base"} <= set(core)
    offenders = {m: sorted({t for t in _imported_names(m, mods[m]) if _in(t, PLUGINS) or t.split(".")[0] == "ray"})
                 for m in core}
    assert {m: ts for m, ts in offenders.items() if ts} == {}
