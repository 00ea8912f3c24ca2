"""The one Keras callback of a training: after each epoch, advance the ResumeState, act on its decisions
(stop, a new learning rate), save it with a checkpoint, then send the epoch to MLflow.

Thin on purpose: the decisions are the functions of stages/training/state.py, so nothing here reads or
writes the internals of Keras' own callbacks, and a resumed run needs no replay.
"""

from __future__ import annotations

import logging
import time

import keras

from stages.tracking import store
from stages.training.state import HISTORY_FIELDS, ResumeState, Rules, TrainState, advance

log = logging.getLogger(__name__)


class EpochEnd(keras.callbacks.Callback):
    """After each epoch: the state advanced and saved with the checkpoint (both survive a kill), the
    decisions applied, then one batched MLflow call, which may fail transiently without stopping training."""

    def __init__(self, train_state: TrainState, state: ResumeState, rules: Rules, run_id: str) -> None:
        super().__init__()
        self.train_state, self.state, self.rules, self.run_id = train_state, state, rules, run_id
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import mlflow

        row = {k: float(v) for k, v in (logs or {}).items() if k in HISTORY_FIELDS}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["epoch_time_s"] = round(time.perf_counter() - self._started, 3)
        self.state = state = advance(self.state, row, self.rules)
        if self.rules.plateau and state.learning_rate != row["learning_rate"]:
            self.model.optimizer.learning_rate = state.learning_rate
            log.info(
                "epoch %d: validation loss stalled, learning rate now %g", state.epoch, state.learning_rate
            )
        self.train_state.save(self.model, state, self.rules)
        if state.stopped:
            log.info(
                "epoch %d: no better %s for %d epochs, stopping early",
                state.epoch,
                self.rules.monitor,
                self.rules.patience,
            )
            self.model.stop_training = True
        try:
            mlflow.log_metrics(row, step=state.epoch, run_id=self.run_id)
        except Exception as exc:
            if not store.is_transient(exc):
                raise
            log.warning(
                "epoch %d was not sent to MLflow (%s); it is kept on disk and sent later",
                state.epoch,
                store.describe(exc),
            )
