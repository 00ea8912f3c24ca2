"""The import graph of the `stages` package, read from its source: which of its modules each imports, at
module level or inside a function, and so, transitively, which code a stage's entry point runs."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "stages"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(module: str) -> Path:
    """The source file of a `stages.*` module (a package's `__init__.py`)."""
    base = REPO / Path(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _is_module(name: str) -> bool:
    base = REPO / Path(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """Every stages.* module `path` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("stages")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stages"):
            for alias in node.names:  # `from stages.core import paths` imports the module stages.core.paths
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if _is_module(submodule) else node.module)
    return found


GRAPH = {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def reachable(start: str) -> set[str]:
    """Every module that importing `start` imports, directly or not (not `start` itself, unless a cycle)."""
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def packages_of(module: str) -> set[str]:
    """The packages Python imports first to import `module`: `stages`, `stages.core` for stages.core.io."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def code_of(entry: str) -> set[Path]:
    """The source files that running the module `entry` imports, its own and its packages' included."""
    modules = {entry} | reachable(entry)
    modules |= {package for module in modules for package in packages_of(module)}
    return {module_file(module) for module in modules}
