"""Each stage declares exactly the param keys it reads: an edit reruns those stages and no others.

Checked with `dvc status` against the committed dvc.lock, as a user editing params.yaml would see it.
"""

from __future__ import annotations

import json

import pytest
from conftest import copy_repository, run, set_params

pytestmark = pytest.mark.slow

# key edited -> the stages that must become stale (check_params tracks every key, and its constant
# output reruns nothing downstream)
EDITS = [
    ("train", "registered_model", "another-name", {"check_params", "report"}),
    ("report", "compare_runs", 3, {"check_params", "report"}),
    ("promote", "alias", "best", {"check_params", "report"}),
    ("promote", "margin", 0.01, {"check_params", "report"}),  # the report judges by the promotion rule
    ("promote", "alpha", 0.01, {"check_params", "report"}),
    ("evaluate", "misclassified_examples", 6, {"check_params", "evaluate"}),
    ("train", "epochs", 3, {"check_params", "train"}),
    ("train", "model", "mlp", {"check_params", "train", "report"}),
    ("data", "read_timeout_s", 10, {"check_params", "download"}),
    ("preprocess", "limit", 1000, {"check_params", "preprocess"}),
    (None, "seed", 7, {"check_params", "preprocess", "train"}),
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repository(tmp_path_factory.mktemp("deps") / "repo")


def stages_reading(repo, key: str) -> set[str]:
    """The stages whose recorded params differ from params.yaml at `key`: tracked as that key, or as the
    whole section holding it (DVC then names the section)."""
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    stale = set()
    for stage, entries in status.items():
        for entry in entries:
            changed = entry.get("changed deps", {}) if isinstance(entry, dict) else {}
            params = changed.get("params.yaml", {})
            if "modified" in (params.get(key), params.get(key.split(".")[0])):
                stale.add(stage)
    return stale


@pytest.mark.parametrize(("section", "name", "value", "expected"), EDITS, ids=[e[1] for e in EDITS])
def test_an_edited_key_makes_exactly_its_readers_stale(repo, section, name, value, expected):
    original = (repo / "params.yaml").read_text()
    try:
        if section is None:
            (repo / "params.yaml").write_text(original.replace("seed: 42", f"seed: {value}", 1))
            key = name
        else:
            set_params(repo, **{section: {name: value}})
            key = f"{section}.{name}"
        assert stages_reading(repo, key) == expected
    finally:
        (repo / "params.yaml").write_text(original)


def code_changes(repo) -> dict[str, set[str]]:
    """Per stage, the code deps `dvc status` reports as modified."""
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    found: dict[str, set[str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            changed = entry.get("changed deps", {}) if isinstance(entry, dict) else {}
            found.setdefault(stage, set()).update(dep for dep in changed if dep.startswith("stages/"))
    return found


ALL = {"check_params", "download", "preprocess", "train", "package", "evaluate", "report"}
CODE_EDITS = [
    ("stages/data/npz.py", {"download", "preprocess", "train", "package", "evaluate", "report"}),
    ("stages/core/io.py", ALL),
    ("stages/tracking/store.py", {"train", "package", "report"}),
    # the served code: repackaged, never retrained (report runs a champion's logged model where it must)
    ("stages/serving/digits.py", {"package", "report"}),
    ("stages/tracking/predictions.py", {"report"}),  # the champion's predictions: no retraining either
    ("stages/data/sources.py", {"download"}),
]


@pytest.mark.parametrize(("module", "expected"), CODE_EDITS, ids=[e[0] for e in CODE_EDITS])
def test_an_edited_module_makes_exactly_the_stages_that_run_it_stale(repo, module, expected):
    """Before, train declared only stages/training: editing npz.py or core/io.py left it "up to date"."""
    path = repo / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# edited\n")
        after = code_changes(repo)
    finally:
        path.write_text(original)
    covering = {
        stage
        for stage, deps in after.items()
        if any(dep == module or module.startswith(f"{dep}/") for dep in deps)
    }
    assert covering == expected
