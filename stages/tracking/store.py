"""The MLflow store every stage logs to, and which of its failures are worth waiting for.

The store is `MLFLOW_TRACKING_URI` when set, else the sqlite file `mlflow.db` at the repository root,
by absolute path: `dvc exp run --queue/--temp` runs stages in a copy under `.dvc/tmp/exps`, where a
relative path would silently start a second store. Two experiments may log at once: MLflow makes every
sqlite session wait up to 20 s for the lock (PRAGMA busy_timeout), and we put the file in WAL mode so
that readers (the UI, `dvc exp show`) never block a writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from stages.core.errors import StageError, scrub

log = logging.getLogger(__name__)

EXPERIMENT = "mnist-pipeline"  # the MLflow experiment every pipeline run belongs to
# Without it, MLflow 3's UI opens an experiment on its GenAI traces overview rather than on the runs.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
SQLITE_BUSY_TIMEOUT_S = 60  # for our own one-off connection that switches the file to WAL
# How long a stage waits for the store to come back before failing: long enough for a tracking server
# restart; the trained state is kept either way, so a rerun only sends what is missing. The environment
# variable overrides it (a *where* setting, like the store itself: params.yaml does not hold it).
PATIENCE_S = 120
PATIENCE_ENV = "MNIST_TRACKING_PATIENCE_S"
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


@contextlib.contextmanager
def file_lock(uri: str) -> Iterator[None]:
    """For a `sqlite:///` store, hold `<file>-lock` while inside: a new store's tables are created by its
    first user, and processes starting at once (the workers of one study) would each create them, all but
    one failing. Any other store creates its own tables once (a server) or takes care of it (PostgreSQL:
    see stages/tuning/study.py)."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with db.with_name(f"{db.name}-lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def reopened(run_id: str) -> Iterator[None]:
    """The ended run `run_id` as MLflow's active run, for the calls that log to the active run only (a
    logged model, a dataset with its context), then ended again as it was: the same status and end time,
    whatever happens inside (a training that finished stays FINISHED, so its model is still found by hash)."""
    import mlflow

    client = mlflow.MlflowClient()
    before = client.get_run(run_id).info
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run()
        client.set_terminated(run_id, before.status, end_time=before.end_time)


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
    mlflow.set_tracking_uri(uri)
    client = None
    try:
        with file_lock(uri):  # the first client creates the store's tables
            _prepare_sqlite(uri)
            client = mlflow.MlflowClient()
            found = client.get_experiment_by_name(experiment)
        if found is not None:
            if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # made by an older version, or by hand
                client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        return client.create_experiment(
            experiment,
            artifact_location=artifact_root(uri, experiment),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    except StageError:
        raise
    except Exception as exc:  # MLflow raises many kinds (MlflowException, requests', sqlalchemy's)
        if client is not None and getattr(exc, "error_code", None) == "RESOURCE_ALREADY_EXISTS":
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
# MLflow's own message for an HTTP error whose body is no JSON (a proxy's error page): where MLflow puts
# the status when it has nothing better; a RestException carries it as data instead.
_HTTP_STATUS = re.compile(r"failed with error code (\d{3}) != \d{3}")
# SQLSTATE classes of PostgreSQL errors that may pass: connection lost or refused (08), server shutting
# down (57P), too many connections (53300), a deadlock or serialization conflict (40001, 40P01).
_TRANSIENT_SQLSTATES = ("08", "57P", "53300", "40001", "40P01")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error and every error it was raised from or while handling (MLflow wraps requests' errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _database_error_is_transient(error: BaseException) -> bool:
    """A database error (SQLAlchemy's OperationalError) by its driver's own code, not its message: a lost
    connection, a locked sqlite file or a PostgreSQL connection class may pass; a missing table, a wrong
    schema or a file that cannot be opened will not. (MLflow calls every OperationalError
    TEMPORARILY_UNAVAILABLE, schema errors included.)"""
    if getattr(error, "connection_invalidated", False):
        return True
    driver = getattr(error, "orig", None)
    if isinstance(driver, sqlite3.Error):
        return getattr(driver, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    sqlstate = getattr(driver, "sqlstate", None)
    if sqlstate is None:  # psycopg: no server answer at all (refused, reset, timed out)
        return type(driver).__name__ == "OperationalError"
    return str(sqlstate).startswith(_TRANSIENT_SQLSTATES)


def is_transient(exc: BaseException) -> bool:
    """Whether the store failed in a way that may pass: no connection, a timeout, HTTP 429 or 5xx, a
    locked or lost database. Anything else (a refused value, a missing run, a schema or permission error,
    a bug) is not worth a retry."""
    import requests
    from mlflow.exceptions import MlflowException, RestException
    from sqlalchemy.exc import OperationalError

    errors = list(_chain(exc))
    database = next((error for error in errors if isinstance(error, OperationalError)), None)
    if database is not None:  # the driver knows better than MLflow's wrapper
        return _database_error_is_transient(database)
    connection_errors = (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.RetryError,
        ConnectionError,
        TimeoutError,
    )
    for error in errors:
        if isinstance(error, connection_errors):
            return True
        if isinstance(error, RestException):
            return error.error_code in TRANSIENT_CODES or error.get_http_status_code() >= 500
        if isinstance(error, MlflowException):
            if status := _HTTP_STATUS.search(str(error)):
                return status.group(1) == "429" or status.group(1).startswith("5")
            if error.error_code in TRANSIENT_CODES:
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


NOTHING_TO_LOSE = "Nothing was written that a rerun would need."


def store_failure(what: str, exc: BaseException, kept: str = NOTHING_TO_LOSE) -> StageError:
    """The message for a store that stopped answering mid-stage: which store, what is kept (`kept`, as
    true as the caller knows it), and what a rerun does."""
    return StageError(
        f"{what} failed: the MLflow tracking store {redact(tracking_uri())} did not answer "
        f"({describe(exc)}). {kept} Once the store answers, rerun `dvc repro`."
    )


def retrying(
    action: Callable[[], T], what: str, patience_s: float | None = None, kept: str = NOTHING_TO_LOSE
) -> T:
    """`action()`, retried (by tenacity) while the store fails transiently, for up to `patience_s`; then a
    StageError saying `kept`. Any other MLflow or database error stops at once, with its own message.

    Only for calls that are safe to repeat: reads, tags, params, metrics. A call that creates something
    goes through `create_once`."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

    patience_s = patience() if patience_s is None else patience_s

    def warn(state) -> None:
        log.warning(
            "%s: the tracking store did not answer (%s); retrying for up to %.0f s",
            what,
            describe(state.outcome.exception()),
            max(patience_s - state.seconds_since_start, 0),
        )

    attempts = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_delay(patience_s),
        wait=wait_exponential(multiplier=0.5, max=RETRY_EVERY_S),
        before_sleep=warn,
        reraise=True,
    )
    try:
        return attempts(action)
    except Exception as exc:
        if is_transient(exc):
            raise store_failure(what, exc, kept) from exc
        if isinstance(exc, MlflowException | SQLAlchemyError):
            raise StageError(f"{what} failed: MLflow refused it: {describe(exc)}") from exc
        raise


def patience() -> float:
    """Seconds to wait for a store that stopped answering: $MNIST_TRACKING_PATIENCE_S, else PATIENCE_S."""
    configured = os.environ.get(PATIENCE_ENV, "").strip()
    try:
        return float(configured) if configured else PATIENCE_S
    except ValueError as exc:
        raise StageError(
            f"{PATIENCE_ENV}={configured!r} is not a number of seconds; fix or unset it"
        ) from exc


@contextlib.contextmanager
def no_http_retries() -> Iterator[None]:
    """MLflow's HTTP client retries any request, POSTs included (its urllib3 Retry allows every method):
    for a create call that would make a second run or version after a lost answer. Off for the call."""
    previous = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = previous


def create_once(
    create: Callable[[], T], find: Callable[[], T | None], what: str, kept: str = NOTHING_TO_LOSE
) -> T:
    """A create call (start a run, register a version) that is never blindly repeated: when an attempt
    fails transiently, the answer may have been lost after the store created it, so the next attempt
    first looks for it (`find`, by something the caller set, such as a tag) and creates only if absent."""
    attempted = False

    def attempt() -> T:
        nonlocal attempted
        if attempted and (found := find()) is not None:
            log.info("%s: found what the unanswered attempt created; carrying on with it", what)
            return found
        attempted = True
        with no_http_retries():
            return create()

    return retrying(attempt, what, kept=kept)


def describe(exc: BaseException) -> str:
    """The first line of an error, passwords masked: fit for a log line or a message."""
    text = scrub(str(exc)).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
