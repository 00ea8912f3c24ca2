"""The study's storage and the study itself, as every worker opens them: at once with others on an empty
database, with the same settings, each with a sampler seed of its own."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.core.config import Params, TuneConfig
from stages.core.errors import ConfigError, StageError
from stages.tracking import store
from stages.tracking.trial import STORAGE_ENV, make_pruner, optuna_storage
from stages.tuning.experiments import experiment_names

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

DEFAULT_STORAGE_FILE = "optuna.db"  # at the repository root, git-ignored
HEARTBEAT_ENV = "MNIST_TUNE_HEARTBEAT_S"  # how often a worker says its trials are alive
HEARTBEAT_S = 30
STALE_AFTER_HEARTBEATS = 4  # a RUNNING trial silent this long belonged to a dead worker: it is failed
SETTINGS_ATTR = "settings"  # what every worker of the study must agree on
NAME_ATTR = "experiment_prefix"  # `<study>-<token>`: its trials' experiments are `<prefix>-<number>`
CREATE_ATTEMPTS = 8  # workers creating Optuna's tables at once: the losers retry once they exist


def heartbeat_s() -> int:
    return int(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_S))


def storage_url(option: str | None, root: Path) -> str:
    """--storage, else MNIST_TUNE_STORAGE, else the embedded file at the repository root. A plain
    `postgresql://` means psycopg 3 (installed), not psycopg2 (SQLAlchemy's default, not installed)."""
    url = (option or os.environ.get(STORAGE_ENV, "")).strip() or f"sqlite:///{root / DEFAULT_STORAGE_FILE}"
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Any failure to reach or use the storage, as one line naming it (password hidden) and the fix."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, ImportError) as exc:  # ImportError: no driver for the URL's database
        raise StageError(
            f"the study's storage {store.redact(url)} is not usable: {store.describe(exc)}. Check that the "
            f"database runs and accepts these credentials (--storage or {STORAGE_ENV}), or leave both unset "
            f"for the file {DEFAULT_STORAGE_FILE}."
        ) from exc
    except Exception as exc:  # Optuna wraps the database's refusal in its own storage errors
        import optuna

        if not isinstance(exc, optuna.exceptions.StorageInternalError):
            raise
        cause = store.describe(exc.__cause__) if exc.__cause__ is not None else store.describe(exc)
        log.debug("the storage refused", exc_info=exc)
        raise StageError(f"the study's storage {store.redact(url)} refused: {cause}") from exc


def open_storage(url: str, on_stale: Callable | None = None) -> optuna.storages.RDBStorage:
    """The storage, with heartbeats. Workers starting at once on an empty database all create Optuna's
    tables: on a sqlite file they take turns; on a server every loser of that race (a duplicate type or
    table, a duplicate version row) waits a moment and opens the tables the winner made. Anything else, an
    unreachable server first, fails at once."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random

    beat = heartbeat_s()
    lost_the_race = (IntegrityError, ProgrammingError, optuna.exceptions.StorageInternalError)
    attempts = Retrying(
        retry=retry_if_exception_type(lost_the_race),
        stop=stop_after_attempt(CREATE_ATTEMPTS),
        wait=wait_random(0.2, 1.0),
        reraise=True,
    )
    with storage_errors(url):
        for attempt in attempts:
            with attempt, store.file_lock(url):
                storage = optuna_storage(
                    url,
                    heartbeat_interval=beat,
                    grace_period=beat * STALE_AFTER_HEARTBEATS,
                    heartbeat_stale_trial_callback=on_stale,
                )
    return storage


def check_comparable(params: Params) -> None:
    """Refuse, before any trial, a search whose trials could not be compared: each is scored, and pruned, on
    the validation split, which must exist and be the same images for all (the space checks its keys)."""
    if params.preprocess.val_size == 0:
        raise ConfigError(
            "preprocess.val_size is 0: a trial is scored on the validation split, and there is none. Hold "
            "some training images out (e.g. preprocess.val_size: 5000) before tuning."
        )
    if not params.tune.space:
        raise ConfigError("params.yaml's tune.space is empty: list the keys a trial varies (README, Tuning)")


def settings(tune: TuneConfig) -> dict[str, Any]:
    """What must agree between the workers of one study, kept with the study."""
    return {"metric": tune.metric, "direction": tune.direction, "space": tune.model_dump()["space"]}


def open_study(
    tune: TuneConfig, url: str, storage: optuna.storages.RDBStorage, worker: str, root: Path
) -> tuple[optuna.Study, str]:
    """The study with this worker's sampler, and its experiments' name prefix. The worker whose
    `create_study` succeeds made it and records its settings and prefix; the others, refused as duplicates
    by the storage, read them. A worker whose settings differ is refused."""
    import optuna

    with storage_errors(url):
        try:
            created = optuna.create_study(study_name=tune.study, storage=storage, direction=tune.direction)
        except optuna.exceptions.DuplicatedStudyError:
            created = None
        if created is not None:
            created.set_user_attr(NAME_ATTR, new_prefix(tune.study, root))
            created.set_user_attr(SETTINGS_ATTR, settings(tune))
        earlier = optuna.load_study(study_name=tune.study, storage=storage).get_trials(deepcopy=False)
        fresh = created is not None and not earlier  # this worker made the study: no one drew before it
        study = optuna.load_study(
            study_name=tune.study,
            storage=storage,
            sampler=optuna.samplers.TPESampler(seed=sampler_seed(tune.seed, worker, len(earlier), fresh)),
            pruner=make_pruner(tune.pruner),
        )
        attrs = _recorded(study, tune, root)
    if attrs[SETTINGS_ATTR] != settings(tune):
        wanted = settings(tune)
        differing = ", ".join(key for key in wanted if wanted[key] != attrs[SETTINGS_ATTR].get(key))
        raise ConfigError(
            f"study {tune.study!r} in {store.redact(url)} was started with another {differing}: its trials "
            "could not be compared. Give this search another tune.study, or set tune back as it was."
        )
    return study, attrs[NAME_ATTR]


def new_prefix(name: str, root: Path) -> str:
    """`<study>-<6 hex digits>`, drawn again while an experiment in this repository starts with it: a study
    made again under an earlier one's name (a deleted optuna.db) restarts its trial numbers at 0."""
    while True:
        prefix = f"{name}-{secrets.token_hex(3)}"
        if not any(ref.startswith(f"{prefix}-") for ref in experiment_names(root)):
            return prefix


def _recorded(study: optuna.Study, tune: TuneConfig, root: Path, wait_s: float = 5) -> dict[str, Any]:
    """The prefix and settings the study's creator recorded (in that order), waiting a moment for a creator
    that has just made the study. A study without them (its creator died first, or an older version of
    mnist-tune made it) gets them now."""
    deadline = time.monotonic() + wait_s
    while SETTINGS_ATTR not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.5)
    if NAME_ATTR not in study.user_attrs:
        study.set_user_attr(NAME_ATTR, new_prefix(study.study_name, root))
    if SETTINGS_ATTR not in study.user_attrs:
        study.set_user_attr(SETTINGS_ATTR, settings(tune))
    return study.user_attrs


def sampler_seed(seed: int, worker: str, earlier_trials: int, fresh: bool) -> int:
    """The sampler's seed: tune.seed for the worker named 0 that created the study, so that a study on one
    machine gives the same suggestions from a fresh start. Mixed with the worker's name and the number of
    trials already in the study otherwise: workers of one study, and a worker restarted under the same name,
    never replay each other's draws (the sampler learns from every earlier trial anyway)."""
    if worker == "0" and fresh:
        return seed
    digest = hashlib.sha256(f"{seed}:{worker}:{earlier_trials}:{fresh}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def counts(study: optuna.Study) -> str:
    """`12 trials: 9 complete, 2 pruned, 1 failed`."""
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    shown = ", ".join(f"{n} {state.replace('fail', 'failed')}" for state, n in sorted(states.items()))
    return f"{sum(states.values())} trials" + (f": {shown}" if shown else "")
