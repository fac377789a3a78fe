"""The layout's rules, checked on the source (docs/architecture.md).

- A wing (`focus/`, `conferencing/`, `clients/`) imports only `webconf` and itself: not at
  module level, not inside a function, not through an importlib string.
- `webconf/` imports no wing, except `webconf/cli.py` (the dispatcher, which loads commands
  by name) and `webconf/deploy/serve.py` (which starts `python -m focus` and
  `python -m conferencing` as processes).
- No import cycle between the project's modules (function-level imports included).
- No source file over 800 lines.

One `ast` pass over every file collects each import with its line, so a failure names the
file, the line and the module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINGS = ("focus", "conferencing", "clients")
CORE = "webconf"
PACKAGES = (CORE, *WINGS, "bench")
"""Packages whose modules form the import graph (bench/ may import anything, but its own
modules must not import each other in a cycle either)."""
CORE_MAY_IMPORT_WINGS = {"webconf/cli.py", "webconf/deploy/serve.py"}
MAX_LINES = 800
_DYNAMIC_IMPORTERS = {"import_module", "find_spec", "__import__"}


@dataclass(frozen=True)
class Import:
    """One import found in a source file."""

    source: str
    """The importing file, relative to the repository root."""
    line: int
    """Where in that file."""
    target: str
    """The dotted module name imported (resolved if it was relative)."""
    dynamic: bool = False
    """True for an importlib/`__import__` string rather than an import statement."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")
                  if "__pycache__" not in p.parts)


def _resolve_relative(path: Path, level: int, module: str | None) -> str:
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join([*package, module] if module else package)


def _imports(path: Path) -> list[Import]:
    """Every import of `path`, anywhere in the file (functions, classes, conditionals)."""
    rel = str(path.relative_to(ROOT))
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
        if isinstance(node, ast.Import):
            found += [Import(rel, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(path, node.level, node.module) if node.level
                    else node.module or "")
            for alias in node.names:  # `from pkg import name`: name may be a submodule
                sub = f"{base}.{alias.name}"
                found.append(Import(rel, node.lineno, sub if sub in MODULES else base))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else (
                func.id if isinstance(func, ast.Name) else "")
            if name in _DYNAMIC_IMPORTERS and node.args and isinstance(
                    node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append(Import(rel, node.lineno, node.args[0].value, dynamic=True))
    return found


def _top(module: str) -> str:
    return module.split(".", 1)[0]


MODULES = {_module_name(path): path for path in _source_files()}
ALL_IMPORTS = {path: _imports(path) for path in MODULES.values()}


def _wing_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


def test_the_import_scan_sees_imports() -> None:
    """Guard the guard: the scan must find known imports of each kind."""
    cli = ALL_IMPORTS[ROOT / "webconf" / "cli.py"]
    assert any(i.target == "importlib" for i in cli)
    serve = ALL_IMPORTS[ROOT / "webconf" / "deploy" / "serve.py"]
    assert any(i.dynamic and i.target.startswith("focus") for i in serve)
    assert any(i.target == "webconf.deploy.config" for i in serve)  # `from .config import`
    assert "conferencing.service" in MODULES and "webconf.sip.digest" in MODULES


def test_wings_import_only_the_core_and_themselves() -> None:
    offending = []
    for path, imports in ALL_IMPORTS.items():
        wing = _wing_of(path)
        if wing not in WINGS:
            continue
        for imp in imports:
            other = _top(imp.target)
            if other in WINGS and other != wing:
                how = "importlib string" if imp.dynamic else "import"
                offending.append(f"{imp.source}:{imp.line}: {how} of {imp.target}")
    assert not offending, "a wing imports another wing:\n" + "\n".join(sorted(set(offending)))


def test_the_core_imports_no_wing() -> None:
    offending = []
    for path, imports in ALL_IMPORTS.items():
        rel = str(path.relative_to(ROOT))
        if _wing_of(path) != CORE or rel in CORE_MAY_IMPORT_WINGS:
            continue
        offending += [f"{imp.source}:{imp.line}: {imp.target}" for imp in imports
                      if _top(imp.target) in WINGS]
    assert not offending, "webconf/ imports a wing:\n" + "\n".join(sorted(set(offending)))


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (each import's most specific module)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for path, imports in ALL_IMPORTS.items():
        source = _module_name(path)
        for imp in imports:
            target = imp.target
            while target and target not in MODULES:  # `import a.b.name` -> module a.b
                target = target.rpartition(".")[0]
            if target and target != source:
                graph[source].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = _graph()
    assert graph["webconf.deploy.serve"] >= {"webconf.deploy.config"}
    cycles = _cycles(graph)
    detail = []
    for component in cycles:
        members = set(component)
        for module in component:
            for target in sorted(graph[module] & members):
                lines = sorted({i.line for i in ALL_IMPORTS[MODULES[module]]
                                if i.target == target or i.target.startswith(target + ".")})
                detail.append(f"  {module} -> {target} (line {', '.join(map(str, lines))})")
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_no_source_file_over_800_lines() -> None:
    long_files = {}
    for path in ALL_IMPORTS:
        count = len(path.read_text().splitlines())
        if count > MAX_LINES:
            long_files[str(path.relative_to(ROOT))] = count
    assert not long_files, f"source files over {MAX_LINES} lines: {long_files}"
