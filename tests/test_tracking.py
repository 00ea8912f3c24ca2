"""Where MLflow logs, and how it fails: the store's location, WAL mode, an unreachable server, secrets."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, FixtureServer, user_env

from stages.core.errors import ConfigError, StageError
from stages.tracking import lineage, store


def test_repository_root_is_found_from_inside_a_dvc_experiment_copy(tmp_path):
    inside = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpabc123" / "stages"
    assert store.repository_root(inside) == tmp_path / "proj"
    assert store.repository_root(tmp_path / "proj") == tmp_path / "proj"


def test_repository_root_is_the_nearest_folder_up_with_a_dvc_yaml(tmp_path):
    (tmp_path / "proj" / "data" / "report").mkdir(parents=True)
    (tmp_path / "proj" / "dvc.yaml").write_text("stages: {}\n")
    assert store.repository_root(tmp_path / "proj" / "data" / "report") == tmp_path / "proj"
    assert store.repository_root(tmp_path) == tmp_path  # none up from here: the folder itself


def test_default_store_is_the_absolute_repository_root_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp_copy = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpxyz"
    exp_copy.mkdir(parents=True)
    monkeypatch.chdir(exp_copy)
    uri = store.tracking_uri()
    assert uri == f"sqlite:///{tmp_path / 'proj' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.tracking_uri() == "http://127.0.0.1:5000"


def test_connect_puts_the_sqlite_store_in_wal_mode_and_artifacts_beside_it(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}?timeout=5")
    monkeypatch.chdir(tmp_path.parent)
    first = store.connect("exp")
    assert store.connect("exp") == first
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with mlflow.start_run(experiment_id=first) as run:
        mlflow.log_text("hello", "note.txt")
    assert (tmp_path / "mlruns" / "exp" / run.info.run_id / "artifacts" / "note.txt").read_text() == "hello"


def test_unreachable_server_fails_in_seconds_naming_the_uri(monkeypatch):
    with FixtureServer() as server:
        closed = server.url("/").rstrip("/")  # nothing listens here once the server is closed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed)
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    with pytest.raises(StageError) as caught:
        store.connect("exp")
    assert f"the MLflow tracking store {closed} is not usable" in str(caught.value)
    assert "unset MLFLOW_TRACKING_URI" in str(caught.value)
    assert time.monotonic() - started < 120  # MLflow's own 7 retries back off for about 244 s in all


def test_passwords_are_redacted_and_never_logged():
    assert store.redact("https://alice:s3cret@mlflow.example.org") == "https://alice:***@mlflow.example.org"
    assert store.redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    with pytest.raises(ConfigError, match="holds a URI with a password"):
        lineage.check_no_secrets({"data.local_dir": "https://bob:pw@host/x"})
    lineage.check_no_secrets({"data.local_dir": "None", "train.model": "fast_cnn"})


def test_flattened_params(tmp_path: Path):
    flat = dict(lineage.flatten({"seed": 1, "data": {"dataset": "mnist", "sources": None, "t": [1, 2]}}))
    assert flat == {"seed": "1", "data.dataset": "mnist", "data.sources": "None", "data.t": "[1, 2]"}


WRITER = """
import sys
import mlflow
from stages.tracking import store
experiment = store.connect("stress")
with mlflow.start_run(experiment_id=experiment):
    for step in range(150):
        mlflow.log_metrics({"a": step, "b": -step}, step=step)
        mlflow.set_tag(f"t{step % 7}", step)
print("done")
"""


def test_two_processes_write_the_default_store_at_once_without_database_locked(tmp_path):
    """What `dvc queue start -j 2` does to the store, concentrated. MLflow's own busy wait does the work
    (our WAL mode does not change the outcome): this guards the guarantee across MLflow versions."""
    import mlflow

    env = user_env(PYTHONPATH=str(REPO))  # no MLFLOW_TRACKING_URI: the default store
    create = "from stages.tracking import store; store.connect('stress')"
    subprocess.run([sys.executable, "-c", create], cwd=tmp_path, env=env, capture_output=True, check=True)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0 and "done" in out, err[-2000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("stress").experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert len(client.get_metric_history(run.info.run_id, "a")) == 150


def test_lineage_tags_name_the_experiment_the_data_and_the_library_versions(monkeypatch):
    import keras
    import mlflow
    import tensorflow as tf

    monkeypatch.setenv("DVC_EXP_NAME", "exp-1234")
    tags = lineage.lineage_tags("abc123", "CPU (2 cores)")
    assert tags["dvc.experiment"] == "exp-1234" and tags["data.content_sha256"] == "abc123"
    assert tags["version.keras"] == keras.__version__ and tags["version.mlflow"] == mlflow.__version__
    assert tags["version.tensorflow"] == tf.__version__  # the backend of this test environment
    assert lineage.library_versions() == {"keras": keras.__version__, "tensorflow": tf.__version__}


def test_a_refused_value_stops_at_once_with_mlflows_own_message(tmp_path, monkeypatch):
    """Only a store that does not answer is waited for; MLflow refusing a value is no outage."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = store.connect("refusals")
    with mlflow.start_run(experiment_id=experiment) as active:
        mlflow.log_param("train.epochs", "2")
        started = time.monotonic()
        with pytest.raises(StageError) as caught:
            store.retrying(lambda: mlflow.log_param("train.epochs", "3"), "logging the params", patience_s=30)
    assert time.monotonic() - started < 30  # not waited for: waiting is what the 30 s of patience are for
    assert "logging the params failed: MLflow refused it" in str(caught.value)
    assert "Changing param values is not allowed" in str(caught.value)
    assert store.run_exists(active.info.run_id) is True
    assert store.run_exists("0" * 32) is False  # no such run: the only answer that may discard checkpoints


def test_a_store_that_does_not_answer_cannot_tell_whether_a_run_exists(monkeypatch):
    import mlflow

    with FixtureServer() as server:
        closed = server.url("/").rstrip("/")  # nothing listens here once it is closed
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(closed)
    try:
        assert store.run_exists("0" * 32) is None
    finally:
        mlflow.set_tracking_uri(None)


def test_transient_failures_are_told_from_the_rest():
    import requests
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

    def wrapped(cause: Exception) -> MlflowException:
        """Raised as MLflow's REST client raises it: while handling requests' error, which is its context."""
        try:
            try:
                raise cause
            except Exception:
                raise MlflowException("API request to http://server failed with exception")  # noqa: B904
        except MlflowException as raised:
            return raised

    assert store.is_transient(wrapped(requests.ConnectionError("refused")))
    assert store.is_transient(MlflowException("API request to endpoint x failed with error code 503 != 200"))
    assert store.is_transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))
    assert store.is_transient(RestException({"error_code": "INTERNAL_ERROR", "message": "db restarting"}))
    assert not store.is_transient(MlflowException("Changing param values", INVALID_PARAMETER_VALUE))
    assert not store.is_transient(MlflowException("Run 'x' not found", RESOURCE_DOES_NOT_EXIST))
    assert not store.is_transient(
        MlflowException("API request to endpoint x failed with error code 403 != 200")
    )
    assert not store.is_transient(ValueError("a bug"))
