"""Pruning a hopeless trial of an `mnist-tune` study from inside its training: each epoch's validation
figure goes to the study (Optuna's `Trial.report`), and the study's pruner decides whether the trial stops
there. The decision is the pruner's, over the storage every worker shares, so it is the same wherever
the trial runs."""

from __future__ import annotations

import logging

import keras

from stages.core.config import PrunerConfig
from stages.core.errors import StageError
from stages.tracking.trial import PRUNED_AT_ATTR, TrialContext, make_pruner, optuna_storage

log = logging.getLogger(__name__)


class PrunedTrialError(StageError):
    """The study's pruner stopped this training: no outputs, the run KILLED, the trial PRUNED."""


class ReportToStudy(keras.callbacks.Callback):
    """After each epoch (once EpochEnd has saved and sent it): report the trial's metric, and stop training
    if the pruner says so."""

    def __init__(self, context: TrialContext, pruner: PrunerConfig | None) -> None:
        import optuna

        super().__init__()
        self.context = context
        storage = optuna_storage(context.storage)
        study = optuna.load_study(study_name=context.study, storage=storage, pruner=make_pruner(pruner))
        self.trial = optuna.trial.Trial(study, context.trial_id)
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.context.metric)
        if value is None:
            return  # no validation split: nothing the pruner could compare
        self.trial.report(float(value), step=epoch + 1)
        if self.trial.should_prune():
            self.pruned_at = epoch + 1
            self.trial.set_user_attr(PRUNED_AT_ATTR, epoch + 1)
            log.info(
                "epoch %d: %s %.4f trails the study's earlier trials: pruned by %s",
                epoch + 1,
                self.context.metric,
                value,
                self.context.study,
            )
            self.model.stop_training = True

    def raise_if_pruned(self) -> None:
        if self.pruned_at is not None:
            raise PrunedTrialError(
                f"trial {self.context.number} of study {self.context.study!r} was pruned after epoch "
                f"{self.pruned_at}: its {self.context.metric} trailed the median of the earlier trials' at "
                "that epoch. Nothing was written; mnist-tune records the trial as pruned."
            )
