"""The package's shape: importing it does nothing, no module imports one that imports it back, no stage
imports a command, and the stage modules stay short."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, user_env

PACKAGE = REPO / "stages"
STAGES = ["check_params", "download", "preprocess", "train", "evaluate", "report"]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every stages.* module `path` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("stages")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stages"):
            for alias in node.names:  # `from stages.core import paths` imports the module stages.core.paths
                submodule = f"{node.module}.{alias.name}"
                known = (PACKAGE.parent / Path(*submodule.split("."))).with_suffix(".py").exists() or (
                    PACKAGE.parent / Path(*submodule.split(".")) / "__init__.py"
                ).exists()
                found.add(submodule if known else node.module)
    return found


GRAPH = {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_module_imports_a_module_that_imports_it_back():
    cycles = sorted(module for module in GRAPH if module in reachable(module))
    assert cycles == []


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_is_a_short_main_and_imports_no_command(stage):
    assert not any(module.startswith("stages.cli") for module in reachable(f"stages.{stage}"))
    source = (PACKAGE / f"{stage}.py").read_text()
    assert len(source.splitlines()) < 200
    functions = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}
    assert "main" in functions
    assert functions["main"].end_lineno - functions["main"].lineno < 100


def test_no_module_is_over_about_300_lines():
    lengths = {module: len(path.read_text().splitlines()) for module, path in
               ((module_name(p), p) for p in PACKAGE.rglob("*.py"))}  # fmt: skip
    assert {module: n for module, n in lengths.items() if n > 320} == {}


# Importing every module of the package with the calls an import must not make recorded. The libraries
# come first, unrecorded: what they do when imported is theirs (TensorFlow registers exit handlers).
IMPORT_EVERYTHING = textwrap.dedent(
    """
    import atexit, importlib, logging, os, pkgutil, sys
    import keras, matplotlib, matplotlib.figure, mlflow, pandas, pydantic, requests, sklearn.metrics, yaml
    calls = []
    atexit.register = lambda *a, **k: calls.append("atexit.register")
    os.umask = lambda *a: calls.append("os.umask") or 0o022
    matplotlib.use = lambda *a, **k: calls.append("matplotlib.use")
    handlers = list(logging.getLogger().handlers)
    import stages
    for module in pkgutil.walk_packages(stages.__path__, "stages."):
        importlib.import_module(module.name)
    if logging.getLogger().handlers != handlers:
        calls.append("logging handlers")
    print(sorted(set(calls)))
    """
)


def test_importing_the_package_has_no_side_effects(tmp_path):
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=tmp_path, capture_output=True,
                          text=True, env=user_env(PYTHONPATH=str(REPO)), check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_served_models_code_imports_nothing_else_of_this_project():
    """stages/serving is pickled by value into each logged model: served without this project installed."""
    assert reachable("stages.serving.pyfunc") <= {"stages.serving", "stages.serving.digits"}
