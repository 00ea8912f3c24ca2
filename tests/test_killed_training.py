"""A training killed at the worst moments loses nothing: each rerun resumes from the last finished epoch
under the same settings, architecture and code (and only then), keeps early stopping and the schedule where
they were, never exposes a partial file, never registers a model twice, and keeps the checkpoints while
the tracking store cannot say whether their run exists.

Every test starts from a copy of one small real pipeline run (`dvc repro` on a stratified subset), kills
the real stage with tests/faults.py, and checks what a user would: the message, what is on disk, and what
MLflow holds. A rerun that only train's behaviour decides is `dvc repro train`; the whole pipeline reruns
where the test is about the stages after it (a resumed run is registered once; a kill after registering).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import (
    FixtureServer,
    answer_the_experiment_lookup,
    client_for,
    digest,
    killed_at,
    run,
    run_id_of,
    set_params,
    truncate_half,
    versions_of,
)

from stages.core.io import load_model

pytestmark = pytest.mark.slow


@pytest.fixture
def repo(small_run_copy: Path) -> Path:
    return small_run_copy  # the name these tests give it


def test_kill_while_writing_a_checkpoint_resumes_from_the_one_before(repo):
    set_params(repo, train={"epochs": 4})
    model_before = digest(repo / "data" / "model" / "model.keras")
    killed_at(repo, "checkpoint")  # torn mid-write of epoch 2's checkpoint
    checkpoints = sorted(p.name for p in (repo / "data" / "train_state" / "checkpoints").iterdir())
    assert checkpoints == ["epoch-0001.weights.h5", "partial-0002.weights.h5"]
    assert digest(repo / "data" / "model" / "model.keras") == model_before  # never touched

    rerun = run(["dvc", "repro"], repo)
    output = rerun.stdout + rerun.stderr
    assert "restored the weights after epoch 1" in output and "Epoch 2/4" in output
    assert "Epoch 1/4" not in output
    run_id = run_id_of(repo)
    steps = [m.step for m in client_for(repo).get_metric_history(run_id, "accuracy")]
    assert sorted(set(steps)) == [1, 2, 3, 4]
    assert len(versions_of(repo, run_id)) == 1
    load_model(repo / "data" / "model" / "model.keras")
    assert not (repo / "data" / "train_state").exists()


def test_a_resumed_run_keeps_early_stopping_and_the_plateau_schedule_where_they_were(repo):
    # mlp: no batch norm, so the final validation figures are exactly those of the best epoch's weights
    # (train settles batch norm on the final weights, which moves them a little)
    set_params(repo, train={"model": "mlp", "epochs": 4, "schedule": "plateau", "early_stopping_patience": 3})
    killed_at(repo, "checkpoint")  # after epoch 1
    rerun = run(["dvc", "repro", "train"], repo)
    output = rerun.stdout + rerun.stderr
    assert "restored the weights after epoch 1" in output
    assert "resumed after epoch 1 with early stopping (" in output and "and the plateau schedule (" in output
    history = (repo / "metrics" / "train_history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4"]
    best = max(float(line.split(",")[4]) for line in history[1:])  # val_accuracy
    final = json.loads((repo / "metrics" / "train.json").read_text())
    assert final["val"]["accuracy"] == pytest.approx(best, abs=1e-6)  # EarlyStopping's best weights


def test_a_run_killed_after_early_stopping_ended_it_trains_no_further_when_resumed(repo):
    # a learning rate too small to change any prediction: validation accuracy stalls at once, and with a
    # patience of 1 EarlyStopping ends the run after epoch 2 of 6. A preset without batch norm, whose
    # moving statistics would change the predictions whatever the learning rate
    stalled = {"model": "mlp", "epochs": 6, "learning_rate": 1e-12, "early_stopping_patience": 1}
    set_params(repo, train=stalled)
    killed_at(repo, "model")  # stopped early, killed while writing the model
    rerun = run(["dvc", "repro", "train"], repo)
    output = rerun.stdout + rerun.stderr
    assert "restored the weights after epoch 2" in output
    assert "Epoch 3/6" not in output  # no step trained after EarlyStopping had ended the run
    history = (repo / "metrics" / "train_history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]
    steps = [m.step for m in client_for(repo).get_metric_history(run_id_of(repo), "accuracy")]
    assert sorted(set(steps)) == [1, 2]
    assert json.loads((repo / "metrics" / "train.json").read_text())["epochs"] == 2


def _steps(repo: Path, run_id: str, metric: str = "accuracy") -> list[int]:
    return sorted(m.step for m in client_for(repo).get_metric_history(run_id, metric))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


# What changed between the kill and the rerun -> the fingerprint parts that differ. (An edit to code alone,
# say stages/data/npz.py, changes only the code part: tests/test_fingerprint.py.)
CODE_CHANGES = {
    "preset default": (
        "stages/training/presets.py",
        "learning_rate=0.003,",
        "learning_rate=0.002,",
        "its settings and code differ",
    ),
    "architecture": (
        "stages/training/architectures.py",
        "Dropout(0.1)(x)",  # fast_cnn's, the preset these tests train
        "Dropout(0.15)(x)",
        "its architecture and code differ",
    ),
}


@pytest.mark.parametrize("change", CODE_CHANGES, ids=list(CODE_CHANGES))
def test_a_killed_run_resumes_only_under_the_same_settings_architecture_and_code(repo, change):
    """Checkpoints that the rerun's code would not have produced are set aside with one line saying why,
    and training starts in a new MLflow run: the killed run keeps its one epoch, never a second epoch 1."""
    set_params(repo, train={"epochs": 2})
    killed_at(repo, "checkpoint")  # after epoch 1
    killed_run = (repo / "data" / "train_state" / "run_id").read_text().strip()
    module, old, new, why = CODE_CHANGES[change]
    _edit(repo / module, old, new)
    assert "train" in run(["dvc", "status"], repo).stdout  # DVC sees the changed code too

    rerun = run(["dvc", "repro", "train"], repo)
    output = rerun.stdout + rerun.stderr
    assert f"set the checkpoints of MLflow run {killed_run} aside" in output and why in output, output[-3000:]
    assert "restored the weights" not in output
    assert (repo / "data" / "train_state.set-aside" / "checkpoints").is_dir()
    new_run = run_id_of(repo)
    assert new_run != killed_run
    assert _steps(repo, killed_run) == [1]  # not 1, 1, 2: no epoch trained twice inside one run
    assert client_for(repo).get_run(killed_run).info.status == "KILLED"
    assert _steps(repo, new_run) == [1, 2]
    assert client_for(repo).get_run(new_run).info.status == "FINISHED"


def test_unreadable_checkpoints_start_a_new_run_not_epoch_1_again_in_the_old(repo):
    set_params(repo, train={"epochs": 2})
    killed_at(repo, "checkpoint")
    killed_run = (repo / "data" / "train_state" / "run_id").read_text().strip()
    for checkpoint in (repo / "data" / "train_state" / "checkpoints").glob("epoch-*.weights.h5"):
        truncate_half(checkpoint)
    rerun = run(["dvc", "repro", "train"], repo)
    output = rerun.stdout + rerun.stderr
    assert "none of its checkpoints could be read" in output, output[-3000:]
    assert _steps(repo, killed_run) == [1] and _steps(repo, run_id_of(repo)) == [1, 2]


def test_params_written_out_as_the_presets_defaults_resume_the_same_training(repo):
    """The fingerprint is of the settings in effect: `epochs: null` -> `epochs: 2` after a kill, when the
    preset's default is what was in effect, changes nothing that was trained."""
    set_params(repo, train={"epochs": 2, "learning_rate": None})
    killed_at(repo, "checkpoint")
    set_params(repo, train={"epochs": 2, "learning_rate": 0.003})  # fast_cnn's own rate, written out
    rerun = run(["dvc", "repro", "train"], repo)
    assert "restored the weights after epoch 1" in rerun.stdout + rerun.stderr


def test_params_edited_after_a_kill_are_named_and_the_run_resumes(repo):
    """MLflow refuses to change a logged param: the resumed run keeps the first values and says which
    differ, rather than waiting on the store and then blaming it."""
    set_params(repo, train={"epochs": 3})
    killed_at(repo, "checkpoint")  # after epoch 1
    set_params(repo, evaluate={"misclassified_examples": 6})  # not a training setting: the run resumes
    rerun = run(["dvc", "repro", "train"], repo)
    output = rerun.stdout + rerun.stderr
    assert "restored the weights after epoch 1" in output
    assert "params edited since this run began" in output
    assert "evaluate.misclassified_examples 12 -> 6" in output
    assert "did not answer" not in output  # no wait on the store, no blame for it
    params = client_for(repo).get_run(run_id_of(repo)).data.params
    assert params["evaluate.misclassified_examples"] == "12"  # what the run began with


def test_a_store_that_cannot_say_whether_the_run_exists_keeps_the_checkpoints(repo):
    """Only "no such run" may discard a killed run's finished epochs; "the store did not answer" may not."""
    set_params(repo, train={"epochs": 3})
    killed_at(repo, "checkpoint")
    checkpoints = repo / "data" / "train_state" / "checkpoints"
    before = sorted(p.name for p in checkpoints.iterdir())
    with FixtureServer() as server:  # answers the experiment lookup, then is unavailable
        answer_the_experiment_lookup(server, repo)
        server.routes["/api/2.0/mlflow/runs/get"] = 503
        result = run(
            [sys.executable, "-m", "stages.train"],
            repo,
            check=False,
            env={"MLFLOW_TRACKING_URI": server.url("/").rstrip("/")},
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (
        "cannot tell whether the MLflow run" in result.stderr and "The checkpoints are kept" in result.stderr
    )
    assert sorted(p.name for p in checkpoints.iterdir()) == before
    rerun = run(["dvc", "repro", "train"], repo)  # the store is back: the run resumes from its checkpoint
    assert "restored the weights after epoch 1" in rerun.stdout + rerun.stderr


def test_kill_while_writing_the_model_never_exposes_a_partial_file(repo):
    set_params(repo, train={"epochs": 2})
    model_dir = repo / "data" / "model"

    def outputs() -> dict[str, str]:
        return {p.name: digest(p) for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")}

    before = outputs()
    killed_at(repo, "model")
    assert outputs() == before  # the previous model, whole
    torn = list(model_dir.glob(".model.keras.*.tmp/model.keras"))
    assert len(torn) == 1  # the torn file exists, under a hidden temporary name no stage reads

    rerun = run(["dvc", "repro", "train"], repo)
    output = rerun.stdout + rerun.stderr
    assert "restored the weights after epoch 2" in output and "Epoch 1/2" not in output
    assert not list(model_dir.glob(".model.*"))
    load_model(model_dir / "model.keras")


def test_kill_after_registering_the_model_does_not_register_it_twice(repo):
    """report registers the packaged model; killed right after, its rerun registers nothing more."""
    set_params(repo, train={"epochs": 2})
    run(["dvc", "repro", "evaluate"], repo)
    killed_run = run_id_of(repo)
    assert versions_of(repo, killed_run) == []  # a training is no release: nothing registered yet
    killed_at(repo, "registered", "stages.report")
    assert len(versions_of(repo, killed_run)) == 1

    run(["dvc", "repro"], repo)
    assert run_id_of(repo) == killed_run
    assert len(versions_of(repo, killed_run)) == 1
    assert client_for(repo).get_run(killed_run).info.status == "FINISHED"
