"""The house's layering (docs/architecture.md), read from the code's own imports: nothing imports what stands
above it, and no file is part of an import circle (function-local imports count too)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# bottom to top; a module may import its own layer and the layers below
LAYERS = [
    "config",
    "features",
    "ctr.data",
    "ctr.tables",
    "ctr.models",
    "ctr.training",
    "ctr.optembed",
    "ctr.runs",
    "ctr.artifact",
    "search",
    "pipelines",
]


def _layer(module: str) -> int:
    best = -1
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            best = i if best < 0 or len(prefix) > len(LAYERS[best]) else best
    return best


def _modules() -> dict[str, Path]:
    out = {}
    for package in ("config", "features", "ctr", "search", "pipelines"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n for n in names if n in known}
    return found


def test_every_project_module_has_a_layer() -> None:
    assert [m for m in _modules() if _layer(m) < 0 and m not in {"ctr"}] == []


def test_nothing_imports_what_stands_above_it() -> None:
    modules = _modules()
    upward = [
        f"{name} ({LAYERS[_layer(name)]}) imports {dep} ({LAYERS[_layer(dep)]})"
        for name, path in modules.items()
        for dep in _imports(path, set(modules))
        if _layer(dep) > _layer(name)
    ]
    assert upward == []


def test_no_import_circle() -> None:
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                circles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])

    # a package's __init__ importing its own submodules is not a circle of files
    def nested(a: str, b: str) -> bool:
        return a.startswith(b + ".") or b.startswith(a + ".")

    circles = [c for c in circles if not any(nested(a, b) for a, b in itertools.pairwise(c))]
    assert circles == []


def test_every_project_import_resolves() -> None:
    """An import of a project module that does not exist (mypy's ignore_missing_imports would not say)."""
    modules = _modules()
    missing = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                root = node.module.split(".")[0]
                if root in {"config", "features", "ctr", "search", "pipelines"} and node.module not in modules:
                    missing.append(f"{name}: from {node.module} import ...")
    assert missing == []
