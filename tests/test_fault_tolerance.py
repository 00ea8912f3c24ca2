"""Faults that must lose nothing: kills at the worst moments, corrupted files, a tracking server that is
down or restarts, a disk that fills up, and files that would run code when loaded.

Every test starts from one small real pipeline run (`dvc repro` on a stratified subset) and checks what
a user would: the exit code, the message, what is on disk, and what MLflow holds.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    REPO,
    FixtureServer,
    client_for,
    free_port,
    mlflow_server,
    pipeline_run_once,
    ran_stages,
    run,
    run_id_of,
    serving,
    set_params,
    up_to_date,
    user_env,
)

from stages.core.io import load_model
from stages.serving.lite import LiteModel

pytestmark = pytest.mark.slow

FAULTS = str(REPO / "tests" / "faults.py")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return pipeline_run_once(tmp_path_factory.mktemp("faults") / "repo")


@pytest.fixture
def repo(base, tmp_path) -> Path:
    """A private copy of the trained repository (outputs, DVC cache and MLflow store included)."""
    copy = tmp_path / "repo"
    shutil.copytree(base, copy, symlinks=True)
    return copy


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions_of(repo: Path, run_id: str) -> list:
    return client_for(repo).search_model_versions(f"run_id='{run_id}'")


def killed_at(repo: Path, point: str, stage: str = "stages.train") -> subprocess.CompletedProcess:
    result = run([sys.executable, FAULTS, point, stage], repo, check=False, env={"PYTHONPATH": str(repo)})
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    return result


# ------------------------------------------------------------------------------------------ killed training


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
    rerun = run(["dvc", "repro"], repo)
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
    rerun = run(["dvc", "repro"], repo)
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

    rerun = run(["dvc", "repro"], repo)
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
        _truncate(checkpoint)
    rerun = run(["dvc", "repro"], repo)
    output = rerun.stdout + rerun.stderr
    assert "none of its checkpoints could be read" in output, output[-3000:]
    assert _steps(repo, killed_run) == [1] and _steps(repo, run_id_of(repo)) == [1, 2]


def test_params_written_out_as_the_presets_defaults_resume_the_same_training(repo):
    """The fingerprint is of the settings in effect: `epochs: null` -> `epochs: 2` after a kill, when the
    preset's default is what was in effect, changes nothing that was trained."""
    set_params(repo, train={"epochs": 2, "learning_rate": None})
    killed_at(repo, "checkpoint")
    set_params(repo, train={"epochs": 2, "learning_rate": 0.003})  # fast_cnn's own rate, written out
    rerun = run(["dvc", "repro"], repo)
    assert "restored the weights after epoch 1" in rerun.stdout + rerun.stderr


def answer_the_experiment_lookup(server: FixtureServer, repo: Path) -> None:
    """Make `server` answer the one call `store.connect` makes, as a tracking server would."""
    experiment = {
        "experiment_id": "1",
        "name": "mnist-pipeline",
        "lifecycle_stage": "active",
        "artifact_location": str(repo / "mlruns"),
        "tags": [{"key": "mlflow.experimentKind", "value": "custom_model_development"}],  # as connect made it
    }
    route = "/api/2.0/mlflow/experiments/get-by-name"
    server.routes[route] = json.dumps({"experiment": experiment}).encode()


def test_params_edited_after_a_kill_are_named_and_the_run_resumes(repo):
    """MLflow refuses to change a logged param: the resumed run keeps the first values and says which
    differ, rather than waiting on the store and then blaming it."""
    set_params(repo, train={"epochs": 3})
    killed_at(repo, "checkpoint")  # after epoch 1
    set_params(repo, evaluate={"misclassified_examples": 6})  # not a training setting: the run resumes
    rerun = run(["dvc", "repro"], repo)
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
    rerun = run(["dvc", "repro"], repo)  # the store is back: the run resumes from its checkpoint
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

    rerun = run(["dvc", "repro"], repo)
    output = rerun.stdout + rerun.stderr
    assert "restored the weights after epoch 2" in output and "Epoch 1/2" not in output
    assert not list(model_dir.glob(".model.*"))
    load_model(model_dir / "model.keras")
    assert len(versions_of(repo, run_id_of(repo))) == 1


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


def test_an_edit_to_the_serving_code_repackages_and_registers_without_retraining(repo):
    """The served model's code changes: package logs the same weights again with it, report registers that
    model, and train (its model, its run, its checkpoints) is left alone."""
    model = repo / "data" / "model" / "model.keras"
    model_before, run_before = digest(model), run_id_of(repo)
    versions_before = versions_of(repo, run_before)
    pyfunc = repo / "stages" / "serving" / "pyfunc.py"
    pyfunc.write_text(pyfunc.read_text() + "\n# an edit to the served code\n")
    result = run(["dvc", "repro"], repo)
    assert ran_stages(result.stdout) == ["package", "report"], result.stdout
    assert digest(model) == model_before and run_id_of(repo) == run_before
    assert len(versions_of(repo, run_before)) == len(versions_before) + 1
    assert up_to_date(repo)


# ------------------------------------------------------------------------------------------ corrupted files


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _alter(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


DAMAGEABLE = [  # (file, the stage that reads it, what that stage says, the stage that makes it)
    ("data/prepared/train.npz", "train", "is corrupt or truncated", "preprocess"),
    ("data/model/model.tflite", "evaluate", "is corrupt or unreadable", "package"),
]


@pytest.mark.parametrize("damage", [_truncate, _alter], ids=["truncated", "altered"])
@pytest.mark.parametrize(("name", "reader", "message", "producer"), DAMAGEABLE, ids=["npz", "model"])
def test_a_damaged_file_is_detected_and_rebuilt(repo, damage, name, reader, message, producer):
    damaged = repo / name
    original = digest(damaged)
    damage(damaged)
    assert "modified:" in run(["dvc", "status"], repo).stdout

    result = run([sys.executable, "-m", f"stages.{reader}"], repo, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{Path(name)} {message}" in result.stderr
    assert f"rerun `dvc repro {producer}`" in result.stderr

    rebuilt = run(["dvc", "repro"], repo)
    assert reader not in ran_stages(rebuilt.stdout)  # the same bytes again: nothing downstream reruns
    assert digest(damaged) == original
    assert up_to_date(repo)
    if name.endswith(".tflite"):
        LiteModel(damaged)


# ------------------------------------------------------------------------------------------ tracking server

MLFLOW_OWN_RETRIES_S = 244  # MLflow's default 7 retries back off 0 + 4 + 8 + ... + 120 s (urllib3 2)


def test_train_fails_in_seconds_before_training_when_the_server_is_down(repo):
    with FixtureServer() as server:
        closed = server.url("/").rstrip("/")  # nothing listens here once it is closed
    uri = closed.replace("http://", "http://alice:s3cret@")
    set_params(repo, train={"epochs": 2})
    started = time.monotonic()
    result = run([sys.executable, "-m", "stages.train"], repo, check=False, env={"MLFLOW_TRACKING_URI": uri})
    elapsed = time.monotonic() - started
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"the MLflow tracking store {closed.replace('http://', 'http://alice:***@')} is not usable" in (
        result.stderr
    )
    assert "s3cret" not in result.stdout + result.stderr
    assert "Epoch 1/2" not in result.stdout and not (repo / "data" / "train_state").exists()
    assert elapsed < MLFLOW_OWN_RETRIES_S / 2, elapsed  # MLflow's own retries were not waited for


def test_a_store_lost_before_any_epoch_says_no_epoch_had_finished(repo):
    """The message says only what is true: here no epoch had finished, so there are none to keep."""
    with FixtureServer() as server:  # answers the experiment lookup; creating a run fails (501)
        answer_the_experiment_lookup(server, repo)
        env = {"MLFLOW_TRACKING_URI": server.url("/").rstrip("/"), "MNIST_TRACKING_PATIENCE_S": "0"}
        result = run([sys.executable, "-m", "stages.train"], repo, check=False, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "starting the MLflow run failed" in result.stderr and "did not answer" in result.stderr
    assert "No epoch had finished" in result.stderr and "epochs are kept" not in result.stderr


def test_a_server_restarted_during_training_gets_a_complete_run(repo, tmp_path):
    """The server goes away after the first epoch and comes back: training carries on, and MLflow ends
    with every epoch and the params (the logged model and its version are package's and report's)."""
    store = tmp_path / "server"
    store.mkdir()
    port = free_port()
    uri = f"http://alice:s3cret@127.0.0.1:{port}"  # the password must show up nowhere
    set_params(repo, train={"epochs": 12})
    history = repo / "data" / "train_state" / "history.csv"
    with serving(mlflow_server(store, port), store, port, "/health"):
        train = subprocess.Popen(
            [sys.executable, "-m", "stages.train"],
            cwd=repo,
            env=user_env(MLFLOW_TRACKING_URI=uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 240
        while not history.exists() or len(history.read_text().splitlines()) < 2:
            assert train.poll() is None, train.stdout.read()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.2)
    time.sleep(2)  # the server is down now; training goes on
    with serving(mlflow_server(store, port), store, port, "/health"):
        output, _ = train.communicate(timeout=600)
        assert train.returncode == 0, output[-4000:]
        assert "s3cret" not in output
        # epochs ended while it was down (each takes about a second, the restart several): sent later
        assert "was not sent to MLflow" in output and "that MLflow missed" in output, output[-4000:]
        import mlflow

        server = f"http://127.0.0.1:{port}"  # the registry too: an earlier test may have set another one
        client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
        run_id = json.loads((repo / "data" / "train_run.json").read_text())["run_id"]
        finished = client.get_run(run_id)
        assert finished.info.status == "FINISHED"
        assert sorted({m.step for m in client.get_metric_history(run_id, "accuracy")}) == list(range(1, 13))
        assert finished.data.params["train.epochs"] == "12" and "final_val_accuracy" in finished.data.metrics
        assert client.search_model_versions(f"run_id='{run_id}'") == []  # report registers, not train
        for value in [*finished.data.params.values(), *finished.data.tags.values()]:
            assert "s3cret" not in value


# ------------------------------------------------------------------------------------------ no room


def _file_size_limit(limit_bytes: int):
    """For a child process: every write past `limit_bytes` fails with EFBIG, as on a full disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report the error instead of killing the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_a_full_disk_fails_clearly_and_leaves_the_earlier_outputs(repo):
    prepared = repo / "data" / "prepared"
    before = {p.name: digest(p) for p in prepared.iterdir()}
    set_params(repo, preprocess={"limit": 2000})  # a new output, which will not fit
    result = subprocess.run(
        [sys.executable, "-m", "stages.preprocess"],
        cwd=repo,
        env=user_env(),
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(1_000_000),
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "failed (File too large); nothing was replaced" in result.stderr
    assert {p.name: digest(p) for p in prepared.iterdir()} == before
    assert not list((repo / "data").glob(".prepared.*"))
