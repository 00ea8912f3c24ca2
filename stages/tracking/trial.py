"""Which trial of an `mnist-tune` study a pipeline run is, if any: mnist-tune says so through the
environment of the `dvc exp run` it starts, so that no setting of the search is a param that DVC tracks
(the same trial settings train the same bytes, in a study or not)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from stages.core.config import PrunerConfig

STORAGE_ENV = "MNIST_TUNE_STORAGE"  # the study's Optuna storage URL
STUDY_ENV = "MNIST_TUNE_STUDY"
TRIAL_ENV = "MNIST_TUNE_TRIAL"  # the trial's number in the study
TRIAL_ID_ENV = "MNIST_TUNE_TRIAL_ID"  # the storage's id of that trial, which Optuna's Trial is opened by
METRIC_ENV = "MNIST_TUNE_METRIC"  # the Keras log the pruner is fed: val_accuracy or val_loss
PARENT_RUN_ENV = "MNIST_TUNE_PARENT_RUN"  # the study's MLflow run, which groups its trials' runs

STUDY_TAG = "optuna.study"
TRIAL_TAG = "optuna.trial"
STATE_TAG = "optuna.state"  # PRUNED on a pruned trial's run (its MLflow status: KILLED)
KIND_TAG = "mnist.kind"  # "study" on the parent run: it trained nothing
PRUNED_AT_ATTR = "pruned_at_epoch"  # set on the Optuna trial by its training when the pruner stops it


@dataclass(frozen=True)
class TrialContext:
    storage: str
    study: str
    number: int
    trial_id: int
    metric: str
    parent_run_id: str

    def environment(self) -> dict[str, str]:
        """What the trial's `dvc exp run` is given."""
        return {
            STORAGE_ENV: self.storage,
            STUDY_ENV: self.study,
            TRIAL_ENV: str(self.number),
            TRIAL_ID_ENV: str(self.trial_id),
            METRIC_ENV: self.metric,
            PARENT_RUN_ENV: self.parent_run_id,
        }

    def tags(self) -> dict[str, str]:
        """The trial's MLflow run: named by study and number, and shown under the study's run."""
        return {STUDY_TAG: self.study, TRIAL_TAG: str(self.number), "mlflow.parentRunId": self.parent_run_id}


def from_environment(environ: Mapping[str, str] | None = None) -> TrialContext | None:
    """The trial this process belongs to, or None outside a study."""
    environ = os.environ if environ is None else environ
    if not environ.get(STUDY_ENV):
        return None
    return TrialContext(
        storage=environ[STORAGE_ENV],
        study=environ[STUDY_ENV],
        number=int(environ[TRIAL_ENV]),
        trial_id=int(environ[TRIAL_ID_ENV]),
        metric=environ[METRIC_ENV],
        parent_run_id=environ[PARENT_RUN_ENV],
    )


def optuna_storage(url: str, **heartbeat: Any) -> optuna.storages.RDBStorage:
    """The study's storage. A sqlite file waits for a writer's lock rather than failing at once: a study
    on one machine has its worker threads and each trial's training writing to it."""
    import optuna

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine, **heartbeat)


def make_pruner(config: PrunerConfig | None) -> optuna.pruners.BasePruner:
    """tune.pruner as Optuna's pruner. A pruner is no part of the stored study: the worker and each
    trial's training (which asks it) build it from the same params.yaml."""
    import optuna

    if config is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=config.startup_trials, n_warmup_steps=config.min_epochs
    )
