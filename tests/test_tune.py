"""`mnist-tune` on one machine, for real: an Optuna study whose trials are `dvc exp run`s of the whole
pipeline on small params, recorded in MLflow. Workers sharing a study on a team's PostgreSQL:
tests/test_tune_workflow.py.

The trials to compare are put in the study with Optuna's own `enqueue_trial`, so that which one the
pruner stops does not hang on the sampler's draw.
"""

from __future__ import annotations

import json
from pathlib import Path

import dvc.api
import mlflow
import optuna
import pytest
import yaml
from conftest import copy_repository, run, set_params
from optuna.trial import TrialState

TINY = {
    "preprocess": {"val_size": 500, "limit": 1000},
    "train": {"model": "mlp", "epochs": 2, "batch_size": 64},  # no batch norm: epoch 1 already tells
    "evaluate": {"misclassified_examples": 4},
}
GOOD, HOPELESS = 0.001, 1.0e-9


def _tuned_repository(dest: Path, study: str, trials: int, space: dict, pruner: dict | None) -> Path:
    repo = copy_repository(dest)
    tune = {
        "study": study,
        "trials": trials,
        "pruner": pruner,
        "space": space,
    }
    set_params(repo, **TINY, tune=tune)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "tiny"], repo)
    return repo


def _experiments(repo: Path) -> list[str]:
    return sorted(run(["dvc", "exp", "list", "--name-only"], repo).stdout.split())


def _trial_runs(tracking_uri: str, study: str) -> dict[int, mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("mnist-pipeline")
    found = client.search_runs([experiment.experiment_id], filter_string=f"tags.`optuna.study` = '{study}'")
    return {int(r.data.tags["optuna.trial"]): r for r in found if "optuna.trial" in r.data.tags}


def _study_run(tracking_uri: str, study: str) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("mnist-pipeline")
    (found,) = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`optuna.study` = '{study}' AND tags.`mnist.kind` = 'study'",
    )
    return found


def test_a_bad_space_is_refused_by_name_before_any_trial(repo_copy):
    set_params(
        repo_copy,
        tune={
            "trails": 3,
            "space": {
                "train.lr": {"type": "float", "low": 0.001, "high": 0.01},
                "train.epochs": {"type": "int", "low": 5, "high": 5},
                "train.batch_size": {"type": "float", "low": 32, "high": 256},
                "evaluate.misclassified_examples": {"type": "int", "low": 1, "high": 4},
                "train.model": {"type": "categorical", "choices": ["cnn", "resnet"]},
                "train.learning_rate": {"type": "float", "low": 0, "high": 0.1, "log": True},
            },
        },
    )
    result = run(["mnist-tune"], repo_copy, check=False)
    assert result.returncode == 2, result.stderr
    for named in (
        "tune.trails: unknown key. Did you mean 'trials'?",
        "'train.lr' is not a param a trial may vary",
        "train.epochs: the range is empty",
        "train.batch_size: 103.",  # a float range on a whole-number param
        "'evaluate.misclassified_examples' is not a param a trial may vary",
        "train.model: 'resnet' is not a valid value",
        "train.learning_rate: a log scale needs low > 0",
    ):
        assert named in result.stderr, (named, result.stderr)
    assert not (repo_copy / "optuna.db").exists() and not (repo_copy / "data").exists()
    assert _experiments(repo_copy) == []

    set_params(repo_copy, tune={"trails": None} | {"space": {}})
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    del params["tune"]["trails"]
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    empty = run(["mnist-tune"], repo_copy, check=False)
    assert empty.returncode == 2 and "tune.space is empty" in empty.stderr, empty.stderr

    unreachable = "postgresql://optuna:secret@127.0.0.1:9/optuna"  # nothing listens on port 9
    default_space = {"train.learning_rate": {"type": "float", "low": 0.001, "high": 0.01, "log": True}}
    set_params(repo_copy, tune={"space": default_space})
    down = run(["mnist-tune", "--storage", unreachable], repo_copy, check=False)
    assert down.returncode == 1, down.stderr
    assert (
        "the study's storage postgresql+psycopg://optuna:***@127.0.0.1:9/optuna is not usable" in down.stderr
    )
    assert "secret" not in down.stderr + down.stdout
    assert _experiments(repo_copy) == []


def test_tuning_settings_rerun_no_stage_but_the_params_check(repo_copy):
    """Only check_params, which validates all of params.yaml, sees the edit; no cached output changes."""
    before = json.loads(run(["dvc", "status", "--json"], repo_copy).stdout)
    space = {"train.batch_size": {"type": "int", "low": 32, "high": 256, "step": 32}}
    set_params(repo_copy, tune={"trials": 7, "seed": 3, "space": space})
    after = json.loads(run(["dvc", "status", "--json"], repo_copy).stdout)
    assert {stage for stage in after if after[stage] != before.get(stage)} == {"check_params"}
    assert run(["dvc", "repro", "check_params"], repo_copy).returncode == 0  # and finds it valid


@pytest.mark.slow
def test_a_study_on_one_machine_prunes_the_hopeless_and_names_the_best(tmp_path):
    space = {"train.learning_rate": {"type": "categorical", "choices": [GOOD, HOPELESS]}}
    pruner = {"startup_trials": 1, "min_epochs": 1}
    repo = _tuned_repository(tmp_path / "repo", "lr", trials=2, space=space, pruner=pruner)
    storage = f"sqlite:///{repo / 'optuna.db'}"
    queued = optuna.create_study(study_name="lr", storage=storage, direction="maximize")
    queued.enqueue_trial({"train.learning_rate": GOOD})
    queued.enqueue_trial({"train.learning_rate": HOPELESS})

    result = run(["mnist-tune"], repo)
    trials = optuna.load_study(study_name="lr", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED], result.stderr
    assert trials[1].intermediate_values.keys() == {1}  # stopped after its first epoch of two
    assert "trial 1 pruned after epoch 1" in result.stderr

    # the finished trial is a DVC experiment, scored by its validation accuracy; the pruned one left none
    assert _experiments(repo) == ["lr-0"]
    shown = json.loads(run(["dvc", "exp", "show", "--json", "--no-pager"], repo).stdout)
    (exp,) = [e for commit in shown for e in commit.get("experiments") or [] if e.get("name") == "lr-0"]
    data = exp["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["learning_rate"] == GOOD
    trained = json.loads(dvc.api.read("metrics/train.json", repo=str(repo), rev="lr-0"))
    val_accuracy = trained["val"]["accuracy"]
    assert trials[0].value == pytest.approx(val_accuracy)
    test_accuracy = data["metrics"]["metrics/eval.json"]["data"]["test"]["accuracy"]

    # MLflow: both trials under the study's run, the pruned one KILLED and tagged so
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    parent = _study_run(uri, "lr")
    runs = _trial_runs(uri, "lr")
    assert {n: r.info.status for n, r in runs.items()} == {0: "FINISHED", 1: "KILLED"}
    assert runs[1].data.tags["optuna.state"] == "PRUNED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert runs[0].data.params["train.learning_rate"] == str(GOOD)
    assert runs[0].data.metrics["final_val_accuracy"] == pytest.approx(val_accuracy)
    assert runs[0].data.tags["mlflow.runName"] == "lr-0" and runs[0].data.tags["dvc.experiment"] == "lr-0"
    assert not any(key.startswith("tune.") for key in runs[0].data.params)  # the search trains nothing
    assert parent.info.status == "FINISHED" and parent.data.tags["best_experiment"] == "lr-0"
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("mnist-pipeline")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on its runs

    # the workspace is untouched, the study is ignored by git, and --best adopts the winner
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
    best = run(["mnist-tune", "--best"], repo).stdout
    assert f"best: trial 0, val_accuracy {val_accuracy:.4f}, test accuracy {test_accuracy:.4f}" in best
    assert f"train.learning_rate: {GOOD}" in best and "adopt it: dvc exp apply lr-0" in best
    run(["dvc", "exp", "apply", "lr-0"], repo)
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["learning_rate"] == GOOD
    assert json.loads((repo / "metrics" / "train.json").read_text())["val"]["accuracy"] == trials[0].value

    again = run(["mnist-tune"], repo)  # the budget is spent: nothing runs
    assert "has its 2 trials" in again.stderr and _experiments(repo) == ["lr-0"]
