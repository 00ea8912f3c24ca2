"""MLflow, the way every stage uses it: one store, one run per trained model, lineage on every run.

The store is `MLFLOW_TRACKING_URI` when set, else the sqlite file `mlflow.db` at the repository root,
by absolute path: `dvc exp run --queue/--temp` runs stages in a copy under `.dvc/tmp/exps`, where a
relative path would silently start a second store. Two experiments may log at once: MLflow makes every
sqlite session wait up to 20 s for the lock (PRAGMA busy_timeout), and we put the file in WAL mode so
that readers (the UI, `dvc exp show`) never block a writer.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from stages.errors import ConfigError, StageError, scrub

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
    """The user's repository, also from inside a DVC experiment's temporary copy of it."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - len(_EXPS_TMP) + 1):
        if parts[i : i + len(_EXPS_TMP)] == _EXPS_TMP:
            return Path(*parts[:i])
    return here


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
        raise StageError(
            f"the MLflow tracking store {redact(uri)} is not usable: {describe(exc)}. "
            "Start the server (or fix MLFLOW_TRACKING_URI), or unset MLFLOW_TRACKING_URI to use the local "
            "sqlite store, and rerun."
        ) from exc


def is_store_error(exc: BaseException) -> bool:
    """An error of the tracking store or the way to it (rather than a bug): worth a retry or a message."""
    import requests
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException | requests.RequestException)


def store_failure(what: str, exc: BaseException) -> StageError:
    """The message for a store that stopped answering mid-stage: which store, and what a rerun does."""
    return StageError(
        f"{what} failed: the MLflow tracking store {redact(tracking_uri())} did not answer "
        f"({describe(exc)}). Nothing is lost: the finished epochs are kept in data/train_state. Once the "
        "store is back, rerun `dvc repro`; training resumes where it stopped and sends what is missing."
    )


def retrying(action: Callable[[], T], what: str, patience_s: float = PATIENCE_S) -> T:
    """`action()`, retried while the store does not answer, for up to `patience_s`; then a StageError."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return action()
        except Exception as exc:
            left = deadline - time.monotonic()
            if not is_store_error(exc):
                raise
            if left <= 0:
                raise store_failure(what, exc) from exc
            log.warning("%s: the tracking store did not answer (%s); retrying for %.0f s", what,
                        describe(exc), left)  # fmt: skip
            time.sleep(min(RETRY_EVERY_S, max(left, 0.1)))


def describe(exc: BaseException) -> str:
    """The first line of an error, passwords masked: fit for a log line or a message."""
    text = scrub(str(exc)).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def flatten(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """params.yaml as MLflow params: `train.model` -> `fast_cnn`; lists and None as text."""
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, str(value)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# The packages the other Keras backends run on: a served model needs them beside Keras.
BACKEND_PACKAGES = {"jax": ("jax", "jaxlib"), "torch": ("torch",)}


def library_versions() -> dict[str, str]:
    """The versions a trained model depends on: Keras and the packages of the backend it ran on."""
    import keras

    versions = {"keras": keras.__version__}
    backend = keras.backend.backend()
    if backend == "tensorflow":  # by import: TensorFlow ships under several names (tensorflow-cpu, ...)
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    else:
        for package in BACKEND_PACKAGES.get(backend, ()):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[package] = importlib.metadata.version(package)
    return versions


def lineage_tags(data_hash: str, device: str) -> dict[str, str]:
    """Which code, data and experiment produced a run, and on what."""
    import keras
    import mlflow

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "dvc.experiment": os.environ.get("DVC_EXP_NAME", "(workspace)"),
        "data.content_sha256": data_hash,
        "device": device,
        "keras.backend": keras.backend.backend(),
        "version.mlflow": mlflow.__version__,
        "version.python": platform.python_version(),
    }
    tags |= {f"version.{name}": version for name, version in library_versions().items()}
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


_SECRET = re.compile(r"(password|secret|token|key)", re.IGNORECASE)


def check_no_secrets(values: Mapping[str, str]) -> None:
    """Refuse to log anything that looks like a credential (user:password@ in a URI)."""
    for key, value in values.items():
        if "@" in value and urlsplit(value).password is not None:
            raise ConfigError(f"{key} holds a URI with a password; refusing to log it to MLflow")
        if _SECRET.search(key) and value not in ("None", ""):
            raise ConfigError(f"{key} looks like a credential; refusing to log it to MLflow")
