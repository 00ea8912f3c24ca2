"""The MLflow store every stage logs to, and which of its failures are worth waiting for.

The store is `MLFLOW_TRACKING_URI` when set, else the sqlite file `mlflow.db` at the repository root,
by absolute path: `dvc exp run --queue/--temp` runs stages in a copy under `.dvc/tmp/exps`, where a
relative path would silently start a second store. Two experiments may log at once: MLflow makes every
sqlite session wait up to 20 s for the lock (PRAGMA busy_timeout), and we put the file in WAL mode so
that readers (the UI, `dvc exp show`) never block a writer.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from stages.core.errors import StageError, scrub

log = logging.getLogger(__name__)

EXPERIMENT = "mnist-pipeline"  # the MLflow experiment every pipeline run belongs to
SQLITE_BUSY_TIMEOUT_S = 60  # for our own one-off connection that switches the file to WAL
# How long a finished training waits for the store to come back before failing: long enough for a tracking
# server restart; the trained state is kept either way, so a rerun only sends what is missing.
PATIENCE_S = 120
RETRY_EVERY_S = 5
T = TypeVar("T")
_EXPS_TMP = (".dvc", "tmp", "exps")


def repository_root(start: Path | None = None) -> Path:
    """The user's repository: the nearest folder up from `start` (the working folder) with a dvc.yaml, also
    from inside a DVC experiment's temporary copy of it; `start` itself when there is none."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - len(_EXPS_TMP) + 1):
        if parts[i : i + len(_EXPS_TMP)] == _EXPS_TMP:
            return Path(*parts[:i])
    return next((folder for folder in (here, *here.parents) if (folder / "dvc.yaml").is_file()), here)


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, or the repository-root sqlite store by absolute path."""
    configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured:
        return configured
    return f"sqlite:///{repository_root() / 'mlflow.db'}"


def redact(uri: str) -> str:
    """The URI without its password, safe to print or log."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (`sqlite:////abs/path` is absolute), or None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve()


def artifact_root(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: mlruns/<experiment> beside a local sqlite store (and
    not where the first run happened to start); a tracking server decides for itself."""
    db = sqlite_file(uri)
    return None if db is None else (db.parent / "mlruns" / experiment).as_uri()


def _prepare_sqlite(uri: str) -> None:
    """WAL mode lets readers and one writer work at once; it is a property of the file, set once."""
    db = sqlite_file(uri)
    if db is None:
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(db, timeout=SQLITE_BUSY_TIMEOUT_S) as con:
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        raise StageError(f"cannot open the MLflow store {db}: {exc}") from exc


def connect(experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store, prove it answers (within seconds), and return the experiment id.

    Called before any training, so an unreachable tracking server costs seconds, not a lost run.
    """
    import mlflow

    uri = tracking_uri()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # escape codes in a stage's log
    if uri.startswith(("http://", "https://")):
        # Fail fast: MLflow's defaults retry an unreachable server for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    if urlsplit(uri).password is not None:
        # MLflow prints "View run ... at <tracking URI>" when a run ends, password and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        log.info("tracking to %s", redact(uri))
    _prepare_sqlite(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(experiment, artifact_location=artifact_root(uri, experiment))
    except Exception as exc:  # MLflow raises many kinds (MlflowException, requests', sqlalchemy's)
        if type(exc).__name__ == "MlflowException" and "already exists" in str(exc):
            return client.get_experiment_by_name(experiment).experiment_id  # created concurrently
        if (status := http_status(exc)) in (401, 403):
            raise StageError(_refused(uri, status, experiment)) from exc
        raise StageError(
            f"the MLflow tracking store {redact(uri)} is not usable: {describe(exc)}. "
            "Start the server (or fix MLFLOW_TRACKING_URI), or unset MLFLOW_TRACKING_URI to use the local "
            "sqlite store, and rerun."
        ) from exc


def _refused(uri: str, status: int, experiment: str) -> str:
    """What to do when the tracking server turns the pipeline away."""
    if status == 401:
        return (
            f"the MLflow tracking server {redact(uri)} asks for a login (HTTP 401): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user that the server's admin created "
            '(README, "A team\'s server"), and rerun.'
        )
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "(none)")
    return (
        f"the MLflow tracking server {redact(uri)} refused the user {user} (HTTP 403): ask the server's "
        f"admin to grant it EDIT on the experiment {experiment!r} and the registered model, and rerun."
    )


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a failed request to a tracking server, wherever MLflow put it."""
    from mlflow.exceptions import RestException

    for error in _chain(exc):
        if isinstance(error, RestException):
            return error.get_http_status_code()
        if status := _HTTP_STATUS.search(str(error)):
            return int(status.group(1))
    return None


# MLflow's error codes for a store that may answer if asked again (HTTP 429, 503, 504).
TRANSIENT_CODES = {
    "TEMPORARILY_UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "REQUEST_LIMIT_EXCEEDED",
    "RESOURCE_EXHAUSTED",
}
_HTTP_STATUS = re.compile(r"failed with error code (\d{3})")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error and every error it was raised from or while handling (MLflow wraps requests' errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(exc: BaseException) -> bool:
    """Whether the store failed in a way that may pass: no connection, a timeout, HTTP 429 or 5xx, a
    locked or lost database. Anything else (a refused value, a missing run, a bug) is not worth a retry."""
    import requests
    from mlflow.exceptions import MlflowException, RestException
    from sqlalchemy.exc import OperationalError

    connection_errors = (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                         ConnectionError, TimeoutError, OperationalError)  # fmt: skip
    for error in _chain(exc):
        if isinstance(error, connection_errors):
            return True
        if isinstance(error, MlflowException):
            if error.error_code in TRANSIENT_CODES:
                return True
            if isinstance(error, RestException) and error.get_http_status_code() >= 500:
                return True
            status = _HTTP_STATUS.search(str(error))
            if status and (status.group(1) == "429" or status.group(1).startswith("5")):
                return True
    return False


def run_exists(run_id: str) -> bool | None:
    """Whether the run is in the store: True, False, or None when the store did not answer (can't tell)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException as exc:
        if is_transient(exc):
            return None
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:  # gone, or malformed
            return False
        raise
    except Exception as exc:
        if is_transient(exc):
            return None
        raise
    return True


def store_failure(what: str, exc: BaseException) -> StageError:
    """The message for a store that stopped answering mid-stage: which store, and what a rerun does."""
    return StageError(
        f"{what} failed: the MLflow tracking store {redact(tracking_uri())} did not answer "
        f"({describe(exc)}). Nothing is lost: the finished epochs are kept in data/train_state. Once the "
        "store is back, rerun `dvc repro`; training resumes where it stopped and sends what is missing."
    )


def retrying(action: Callable[[], T], what: str, patience_s: float = PATIENCE_S) -> T:
    """`action()`, retried while the store fails transiently, for up to `patience_s`; then a StageError.
    Any other MLflow error stops at once, with MLflow's own message."""
    from mlflow.exceptions import MlflowException

    deadline = time.monotonic() + patience_s
    while True:
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc):
                if isinstance(exc, MlflowException):
                    raise StageError(f"{what} failed: MLflow refused it: {describe(exc)}") from exc
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise store_failure(what, exc) from exc
            log.warning("%s: the tracking store did not answer (%s); retrying for %.0f s", what,
                        describe(exc), left)  # fmt: skip
            time.sleep(min(RETRY_EVERY_S, max(left, 0.1)))


def describe(exc: BaseException) -> str:
    """The first line of an error, passwords masked: fit for a log line or a message."""
    text = scrub(str(exc)).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
