"""Retries a library would write: only transient failures of calls that are safe to repeat; a create call
(start a run, register a version) whose answer was lost is looked up, never made twice; a schema error
stops at once. Against a real `mlflow server` behind a proxy that loses one answer, and a real sqlite store.
"""

from __future__ import annotations

import http.client
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow.pyfunc
import pytest
from conftest import free_port, mlflow_server, serving

from stages.core.errors import StageError
from stages.tracking import registry, store


class LosingProxy:
    """Forwards every request to a real tracking server, but drops the answer to the first request for
    each path in `lose`, after the server has acted on it: what a network cut or a proxy timeout does."""

    def __init__(self, upstream_port: int, lose: set[str]) -> None:
        self.lose, self.lost = set(lose), []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                path = self.path.split("?")[0]
                if path in proxy.lose:
                    proxy.lose.discard(path)
                    proxy.lost.append(path)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # the answer never arrives
                    return
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def do_PUT(self) -> None:
                self._forward()

            def do_PATCH(self) -> None:
                self._forward()

            def do_DELETE(self) -> None:
                self._forward()

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"

    def close(self) -> None:
        self._httpd.shutdown()


class ConstantModel(mlflow.pyfunc.PythonModel):
    """A stand-in for the registry test: any logged model will do."""

    def predict(self, context, model_input, params=None):
        return [0] * len(model_input)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    with serving(mlflow_server(root, port), root, port, "/health"):
        yield port


@pytest.mark.slow
def test_a_lost_answer_to_a_create_call_makes_no_second_run_or_version(tracking_server, monkeypatch):
    """MLflow's HTTP client retries any request, POSTs included, so a lost answer to `runs/create` used to
    leave an orphan run (and to `model-versions/create`, a second version). Now the run is found by the
    tag the client set and the version by its run, and the stage carries on."""
    from stages.training import run

    lose = {"/api/2.0/mlflow/runs/create", "/api/2.0/mlflow/model-versions/create"}
    proxy = LosingProxy(tracking_server, lose)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    mlflow.set_registry_uri(proxy.url)  # an earlier test in this process may have set another registry
    try:
        experiment = store.connect("lost-answers")
        run_id = run.open_run(experiment, "lossy", None, None, kept="")
        mlflow.pyfunc.log_model(name="model", python_model=ConstantModel())
        version = store.retrying(lambda: registry.register(run_id, "lost-answers-model"), "registering")
    finally:
        mlflow.end_run()
        mlflow.set_registry_uri(None)
        proxy.close()
    direct = f"http://127.0.0.1:{tracking_server}"
    server = mlflow.MlflowClient(tracking_uri=direct, registry_uri=direct)
    assert sorted(proxy.lost) == sorted(lose)
    assert [r.info.run_id for r in server.search_runs([experiment])] == [run_id]
    versions = server.search_model_versions("name='lost-answers-model'")
    assert [v.version for v in versions] == [version] == ["1"]


def test_a_schema_error_stops_at_once_with_the_databases_message(tmp_path, monkeypatch):
    """MLflow calls every SQLAlchemy OperationalError TEMPORARILY_UNAVAILABLE; a missing table is no
    outage, and waiting for it would only hide it."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = store.connect("schema")
    run_id = mlflow.MlflowClient().create_run(experiment).info.run_id
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        con.execute("DROP TABLE params")  # a store whose schema is not what this MLflow expects
    started = time.monotonic()
    with pytest.raises(StageError) as caught:
        store.retrying(
            lambda: mlflow.MlflowClient().log_param(run_id, "a", "b"), "logging the params", patience_s=30
        )
    assert time.monotonic() - started < 30  # not waited for: waiting is what the 30 s of patience are for
    assert "logging the params failed: MLflow refused it" in str(caught.value)
    assert "no such table: params" in str(caught.value)


def test_a_locked_database_is_transient_and_a_missing_table_is_not(tmp_path):
    """Told apart by the driver's own error code (SQLITE_BUSY), not by the words of its message."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", connect_args={"timeout": 0})
    with engine.begin() as setup:
        setup.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OperationalError) as locked, engine.begin() as con:
            con.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with pytest.raises(OperationalError) as missing, engine.begin() as con:
        con.execute(text("INSERT INTO absent VALUES (1)"))
    assert store.is_transient(locked.value)
    assert not store.is_transient(missing.value)
