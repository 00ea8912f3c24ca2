"""Faults that must lose nothing: corrupted files, a tracking server that is down or restarts, a disk that
fills up, and an edit to the serving code alone. (Kills: tests/test_killed_training.py.)

Every test starts from a copy of one small real pipeline run (`dvc repro` on a stratified subset) and
checks what a user would: the exit code, the message, what is on disk, and what MLflow holds.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    FixtureServer,
    answer_the_experiment_lookup,
    digest,
    free_port,
    mlflow_server,
    ran_stages,
    run,
    run_id_of,
    serving,
    set_params,
    truncate_half,
    up_to_date,
    user_env,
    versions_of,
)

from stages.serving.lite import LiteModel

pytestmark = pytest.mark.slow


@pytest.fixture
def repo(small_run_copy: Path) -> Path:
    return small_run_copy  # the name these tests give it


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


def _alter(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


DAMAGEABLE = [  # (file, the stage that reads it, what that stage says, the stage that makes it)
    ("data/prepared/train.npz", "train", "is corrupt or truncated", "preprocess"),
    ("data/model/model.tflite", "evaluate", "is corrupt or unreadable", "package"),
]


@pytest.mark.parametrize("damage", [truncate_half, _alter], ids=["truncated", "altered"])
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
