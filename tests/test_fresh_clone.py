"""The README's main command on a fresh clone, on the default params and the real data, leaves the
repository as it found it: the same dvc.lock (the same data, model bytes and metrics), only the wall times
in metrics/timing.json changed, and an MLflow run that is not marked dirty.

The one test here trains the default preset in full (minutes): it is what a newcomer runs first.
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ALL_STAGES, REPO, client_for, copy_repository, ran_stages, run, run_id_of

pytestmark = pytest.mark.slow

EVALUATE_FILES = [f"metrics/{name}" for name in ("eval.json", "per_class.csv", "confusion.csv")] + [
    f"metrics/{name}" for name in ("confusion.png", "misclassified.png", "train_history.csv")
]


def _machine(repo) -> dict:
    """What trained the repository's model: metrics/machine.json."""
    return json.loads((repo / "metrics" / "machine.json").read_text())


def test_the_main_command_on_a_fresh_clone_changes_nothing_but_timings(tmp_path):
    committed_lock = (REPO / "dvc.lock").read_text()
    repo = copy_repository(tmp_path / "clone")
    assert (repo / "dvc.lock").read_text() == committed_lock

    result = run(["dvc", "repro"], repo)
    assert "failed call to cuInit" not in result.stderr and "NodeDef mentions" not in result.stderr
    assert "training on CPU" in result.stderr or "training on 1 x GPU" in result.stderr  # the device, said
    changed = [line[3:] for line in run(["git", "status", "--porcelain"], repo).stdout.splitlines()]
    diff = run(["git", "diff", "--stat"], repo).stdout
    if _machine(repo) == _machine(REPO):
        # evaluate's outputs are committed, and train reproduced its input byte for byte: DVC skips it
        assert ran_stages(result.stdout) == [stage for stage in ALL_STAGES if stage != "evaluate"]
        assert changed == ["metrics/timing.json"], diff
        assert (repo / "dvc.lock").read_text() == committed_lock
    else:
        # other kernels (instruction sets, GPU, backend) give other bytes for the same seed: train's and
        # evaluate's outputs differ, and nothing before them does
        assert ran_stages(result.stdout) in (
            ALL_STAGES,
            [stage for stage in ALL_STAGES if stage != "evaluate"],
        )
        assert set(changed) <= {"dvc.lock", "metrics/machine.json", "metrics/timing.json", *EVALUATE_FILES}, (
            diff
        )
        lock, committed = (
            yaml.safe_load(text)["stages"] for text in ((repo / "dvc.lock").read_text(), committed_lock)
        )
        for stage in ("check_params", "download", "preprocess"):
            assert lock[stage] == committed[stage], stage
    assert json.loads((repo / "metrics" / "eval.json").read_text())["test"]["accuracy"] >= 0.995

    recorded = client_for(repo).get_run(run_id_of(repo)).data
    tags = recorded.tags
    assert tags["git.dirty"] == "false" and "git.changed_files" not in tags
    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())["test"]
    assert recorded.metrics["test_accuracy"] == evaluation["accuracy"]  # report recorded it all the same
    assert "uncommitted" not in (repo / "data" / "report" / "report.md").read_text()
    assert json.loads((repo / "metrics" / "timing.json").read_text())["train_time_s"] > 0
