"""`mnist-tune` on one machine, for real: an Optuna study whose trials are `dvc exp run`s of the pipeline up
to train on small params, recorded in MLflow. Workers sharing a study on a team's PostgreSQL (started at
once, one killed): tests/test_tune_workers.py and tests/test_tune_workflow.py.

The trials to compare are put in the study with Optuna's own `enqueue_trial`, so that which one the
pruner stops does not hang on the sampler's draw.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import optuna
import pytest
import requests
import yaml
from conftest import copy_repository, free_port, ran_stages, run, serving, set_params
from optuna.trial import TrialState

TINY = {
    "preprocess": {"val_size": 500, "limit": 1000},
    "train": {"model": "mlp", "epochs": 2, "batch_size": 64},  # no batch norm: epoch 1 already tells
    "evaluate": {"misclassified_examples": 4},
}
GOOD, HOPELESS = 0.002, 1.0e-9  # GOOD is not mlp's own rate: adopting it trains another model


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
                "preprocess.limit": {"type": "int", "low": 1000, "high": 2000},
                "seed": {"type": "int", "low": 1, "high": 9},
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
        "'preprocess.limit' changes the data or the validation split",
        "'seed' changes the data or the validation split",
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

    default_space = {"train.learning_rate": {"type": "float", "low": 0.001, "high": 0.01, "log": True}}
    set_params(repo_copy, tune={"space": default_space}, preprocess={"val_size": 0})
    unscored = run(["mnist-tune"], repo_copy, check=False)
    assert unscored.returncode == 2 and "preprocess.val_size is 0" in unscored.stderr, unscored.stderr
    assert "Traceback" not in unscored.stderr and not (repo_copy / "optuna.db").exists()

    set_params(repo_copy, preprocess={"val_size": 5000})
    unreachable = "postgresql://optuna:secret@127.0.0.1:9/optuna"  # nothing listens on port 9
    for command in (["mnist-tune"], ["mnist-tune", "--best"]):
        down = run([*command, "--storage", unreachable], repo_copy, check=False)
        assert down.returncode == 1, down.stderr
        lines = [line for line in down.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in down.stderr, down.stderr
        assert (
            "the study's storage postgresql+psycopg://optuna:***@127.0.0.1:9/optuna is not usable" in lines[0]
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
    run(["dvc", "repro"], repo)  # a trained baseline, whose outputs `dvc exp apply` checks out
    run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "baseline"], repo)
    baseline_versions = 1
    storage = f"sqlite:///{repo / 'optuna.db'}"
    queued = optuna.create_study(study_name="lr", storage=storage, direction="maximize")
    queued.enqueue_trial({"train.learning_rate": GOOD})
    queued.enqueue_trial({"train.learning_rate": HOPELESS})

    result = run(["mnist-tune"], repo)
    study = optuna.load_study(study_name="lr", storage=storage)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED], result.stderr
    assert trials[1].intermediate_values.keys() == {1}  # stopped after its first epoch of two
    assert "trial 1 pruned after epoch 1" in result.stderr

    # the finished trial is a DVC experiment of the pipeline up to train, scored by its validation accuracy
    name = trials[0].user_attrs["experiment"]
    assert (
        name.startswith("lr-")
        and name.endswith("-0")
        and name == study.user_attrs["experiment_prefix"] + "-0"
    )
    assert _experiments(repo) == [name]
    shown = json.loads(run(["dvc", "exp", "show", "--json", "--no-pager"], repo).stdout)
    (exp,) = [e for commit in shown for e in commit.get("experiments") or [] if e.get("name") == name]
    data = exp["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["learning_rate"] == GOOD
    val_accuracy = data["metrics"]["metrics/val.json"]["data"]["val"]["accuracy"]
    assert trials[0].value == pytest.approx(val_accuracy)
    assert "Running stage 'train'" in (repo / "data" / "tune" / "lr" / f"{name}.log").read_text()
    for stage in ("package", "evaluate", "report"):
        assert f"Running stage '{stage}'" not in (repo / "data" / "tune" / "lr" / f"{name}.log").read_text()

    # MLflow: both trials under the study's run, the pruned one KILLED; trainings, not releases
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    parent = _study_run(uri, "lr")
    runs = _trial_runs(uri, "lr")
    assert {n: r.info.status for n, r in runs.items()} == {0: "FINISHED", 1: "KILLED"}
    assert runs[1].data.tags["optuna.state"] == "PRUNED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert runs[0].data.params["train.learning_rate"] == str(GOOD)
    assert runs[0].data.metrics["final_val_accuracy"] == pytest.approx(val_accuracy)
    assert runs[0].data.tags["mlflow.runName"] == name and runs[0].data.tags["dvc.experiment"] == name
    assert not any(key.startswith("tune.") for key in runs[0].data.params)  # the search trains nothing
    assert not any(key.startswith("test_") for key in runs[0].data.metrics)  # no test set read
    assert {i.dataset.name for i in runs[0].inputs.dataset_inputs} == {"mnist/train", "mnist/val"}
    assert len(client.search_model_versions("name='mnist-classifier'")) == baseline_versions  # no release
    assert parent.info.status == "FINISHED" and parent.data.tags["best_experiment"] == name
    figures = {f.path for f in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/optimization_history.png", "figures/parallel_coordinate.png"} <= figures
    experiment = client.get_experiment_by_name("mnist-pipeline")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on its runs

    # the workspace is untouched, the study is ignored by git, and --best says how to adopt the winner
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
    best = run(["mnist-tune", "--best"], repo).stdout
    assert f"best: trial 0, val_accuracy {val_accuracy:.4f}" in best
    assert f"train.learning_rate: {GOOD}" in best and f"  dvc exp apply {name}\n  dvc repro" in best
    again = run(["mnist-tune"], repo)  # the budget is spent: nothing runs
    assert "ran 0 trial(s)" in again.stderr and _experiments(repo) == [name]

    # adopting it packages, evaluates, reports and registers that one model, without training again
    run(["dvc", "exp", "apply", name], repo)
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["learning_rate"] == GOOD
    adopted = run(["dvc", "repro"], repo)
    ran = ran_stages(adopted.stdout)  # check_params too: its uncached marker is no experiment's output
    assert "train" not in ran and ran[-3:] == ["package", "evaluate", "report"], adopted.stdout
    versions = client.search_model_versions("name='mnist-classifier'")
    assert len(versions) == baseline_versions + 1
    assert max(versions, key=lambda v: int(v.version)).run_id == runs[0].info.run_id


@pytest.mark.slow
def test_a_resumed_study_suggests_new_points_and_an_error_stops_the_worker(tmp_path):
    """A worker restarted under the same name (the default 0) draws anew, informed by the earlier trials;
    a trial that fails stops the worker, which exits non-zero naming it."""
    space = {"train.learning_rate": {"type": "float", "low": 0.0005, "high": 0.01, "log": True}}
    repo = _tuned_repository(tmp_path / "repo", "resumed", trials=1, space=space, pruner=None)
    set_params(repo, train={"epochs": 1})
    run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "one epoch"], repo)
    refused = run(["mnist-tune"], repo, check=False)  # trials train on the workspace's prepared data
    assert refused.returncode == 1 and "run `dvc repro preprocess`" in refused.stderr, refused.stderr
    run(["dvc", "repro", "preprocess"], repo)
    run(["mnist-tune"], repo)
    set_params(repo, tune={"trials": 2})
    run(["mnist-tune"], repo)
    storage = f"sqlite:///{repo / 'optuna.db'}"
    trials = optuna.load_study(study_name="resumed", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    first, second = (t.params["train.learning_rate"] for t in trials)
    assert first != second  # not the first trial's draw replayed
    names = [t.user_attrs["experiment"] for t in trials]
    assert _experiments(repo) == sorted(names) and len(set(names)) == 2

    queued = optuna.load_study(study_name="resumed", storage=storage)
    queued.enqueue_trial({"train.learning_rate": -1.0})  # check_params refuses it: the trial fails
    set_params(repo, tune={"trials": 3})
    failed = run(["mnist-tune"], repo, check=False)
    assert failed.returncode == 1, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "trial 2 (resumed-" in errors[0] and "failed" in errors[0], failed.stderr
    assert "-1.0" in errors[0]  # the cause: the queued value, which the space refuses
    states = [t.state for t in optuna.load_study(study_name="resumed", storage=storage).get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]


def test_optuna_dashboard_shows_the_study_from_its_storage(tmp_path):
    """The README's `optuna-dashboard` on the study's storage: it lists the study and its trials."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="shown", storage=storage, direction="maximize")
    for value in (0.97, 0.98):
        trial = study.ask(
            {"train.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
        )
        study.tell(trial, value)
    port = free_port()
    command = ["optuna-dashboard", storage, "--host", "127.0.0.1", "--port", str(port)]
    with serving(command, tmp_path, port, "/api/studies") as url:
        studies = requests.get(f"{url}/api/studies", timeout=30).json()["study_summaries"]
        (shown,) = [s for s in studies if s["study_name"] == "shown"]
        detail = requests.get(f"{url}/api/studies/{shown['study_id']}", timeout=30).json()
    assert [t["values"] for t in detail["trials"]] == [[0.97], [0.98]]
    assert detail["trials"][0]["params"][0]["name"] == "train.learning_rate"
