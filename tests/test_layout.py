"""The package's shape: importing it does nothing, no module imports one that imports it back, and no
stage imports a command. (The import graph is tests/imports.py; test_dvc_dependencies.py checks dvc.yaml
against it.)"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import REPO, user_env
from imports import GRAPH, PACKAGE, code_of, reachable

STAGES = ["check_params", "download", "preprocess", "train", "package", "evaluate", "report"]


def test_no_module_imports_a_module_that_imports_it_back():
    cycles = sorted(module for module in GRAPH if module in reachable(module))
    assert cycles == []


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_has_a_main_and_imports_no_command(stage):
    """Length follows from clarity: no line counts here, only the shape (a main, no command imported)."""
    assert not any(module.startswith("stages.cli") for module in reachable(f"stages.{stage}"))
    source = (PACKAGE / f"{stage}.py").read_text()
    functions = {node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}
    assert "main" in functions


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
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=user_env(PYTHONPATH=str(REPO)),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_served_models_code_imports_nothing_else_of_this_project():
    """stages/serving is pickled by value into each logged model: served without this project installed."""
    assert reachable("stages.serving.pyfunc") <= {
        "stages.serving",
        "stages.serving.digits",
        "stages.serving.lite",
    }


def declared_code(stage: str) -> set[Path]:
    """The files under the stage's `stages/` deps in dvc.yaml (a folder stands for every .py in it)."""
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"]
    files = set()
    for dep in (REPO / dep for dep in deps if dep.startswith("stages/")):
        assert dep.exists(), f"dvc.yaml: {stage} declares {dep.relative_to(REPO)}, which does not exist"
        files |= set(dep.rglob("*.py")) if dep.is_dir() else {dep}
    return files


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_declares_all_the_code_a_stage_imports(stage):
    """A change to any module a stage runs makes the stage stale: its deps cover the import graph of its
    entry point, transitively (package __init__ files included), so the list cannot drift."""
    missing = sorted(
        str(path.relative_to(REPO)) for path in code_of(f"stages.{stage}") - declared_code(stage)
    )
    assert missing == [], f"add to the deps of {stage} in dvc.yaml: {missing}"


def test_the_import_graph_sees_imports_inside_functions():
    """train imports Keras's side inside its functions: the graph must follow them, or the test above
    would pass on a stage that declares too little."""
    assert {"stages.training.presets", "stages.training.run"} <= reachable("stages.train")
    assert {"stages.serving.export", "stages.serving.logged", "stages.serving.pyfunc"} <= reachable(
        "stages.package"
    )


def test_training_imports_no_serving_code():
    """train is a training, the last stage of a search's trial: packaging the model for serving is the
    package stage's, so an edit to stages/serving repackages without retraining (dvc.yaml: train does not
    depend on stages/serving)."""
    assert not any(module.startswith("stages.serving") for module in reachable("stages.train"))
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    assert not any(dep.startswith("stages/serving") for dep in deps)
