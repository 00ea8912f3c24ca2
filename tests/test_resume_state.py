"""A resumed training's EarlyStopping and ReduceLROnPlateau carry on where the killed run left them.

`fit()` resets both callbacks when it starts. Here a "live" pair sees five epochs as an uninterrupted run
would; a fresh pair, reset by `on_train_begin` as `fit()` does, is brought up to date from the history and
checkpoints on disk by `ResumedCallbackState`. Both pairs must end in the same state.
"""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

from stages.models import Settings
from stages.train import HISTORY_FIELDS, EpochRecorder, TrainState, callbacks_for

VAL_LOSS = [1.0, 0.8, 0.85, 0.9, 0.95]  # best at epoch 2, then stalling: the plateau halves the rate
VAL_ACCURACY = [0.50, 0.70, 0.65, 0.60, 0.60]  # best at epoch 2


def small_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


def stateful_pair(
    model: keras.Model, state: TrainState, finished: int, early_stopping_patience: int | None = 4
) -> list[keras.callbacks.Callback]:
    """EarlyStopping and ReduceLROnPlateau as the train stage makes them (and the replay, when resuming)."""
    settings = Settings(optimizer="sgd", learning_rate=0.1, optimizer_options={}, epochs=10, batch_size=2,
                        schedule="plateau", early_stopping_patience=early_stopping_patience)  # fmt: skip
    callbacks = callbacks_for(settings, state, "run-id", has_val=True, finished_epochs=finished)
    assert isinstance(callbacks[0], EpochRecorder)
    for callback in callbacks[1:]:
        callback.set_model(model)
    return callbacks[1:]


def learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def run_live(state: TrainState, live_model: keras.Model, live: list) -> dict[int, list[np.ndarray]]:
    """Five epochs as an uninterrupted run sees them, recorded on disk as EpochRecorder does; the weights
    after each."""
    state.start("run-id")
    for callback in live:
        callback.on_train_begin()
    weights_after: dict[int, list[np.ndarray]] = {}
    with state.history_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        for epoch, (loss, accuracy) in enumerate(zip(VAL_LOSS, VAL_ACCURACY, strict=True), start=1):
            # an epoch of "training": new weights; then what EpochRecorder does, then the callbacks
            live_model.set_weights([w + epoch for w in small_model(seed=epoch).get_weights()])
            weights_after[epoch] = live_model.get_weights()
            row = {"epoch": epoch, "loss": 0.0, "accuracy": 0.0, "val_loss": loss, "val_accuracy": accuracy,
                   "learning_rate": learning_rate(live_model), "epoch_time_s": 1.0}  # fmt: skip
            writer.writerow(row)
            fh.flush()
            state.save_checkpoint(live_model, epoch)
            for callback in live:
                callback.on_epoch_end(epoch - 1, {k: v for k, v in row.items() if k != "epoch"})
    return weights_after


def test_resumed_callbacks_match_an_uninterrupted_run(tmp_path):
    state = TrainState(tmp_path / "train_state", "fingerprint", keep_best=True)
    live_model = small_model(seed=0)
    live = stateful_pair(live_model, state, finished=0)
    weights_after = run_live(state, live_model, live)
    kept = [epoch for epoch, _ in state.checkpoints()]
    assert kept == [5, 4, 2]  # the newest two, and the best epoch's for EarlyStopping

    resumed_model = small_model(seed=99)
    assert state.restore(resumed_model) == 5
    resumed = stateful_pair(resumed_model, state, finished=5)
    for callback in resumed:
        callback.on_train_begin()  # what fit() does: resets the pair, then the replay runs last

    (live_stop, live_plateau), (stop, plateau, _) = live, resumed
    assert learning_rate(live_model) == pytest.approx(0.05)  # halved once, after epoch 4
    assert learning_rate(resumed_model) == pytest.approx(learning_rate(live_model))
    assert (stop.best, stop.best_epoch, stop.wait) == (live_stop.best, live_stop.best_epoch, live_stop.wait)
    assert (plateau.best, plateau.wait, plateau.cooldown_counter) == (
        live_plateau.best, live_plateau.wait, live_plateau.cooldown_counter)  # fmt: skip
    for got, want in zip(stop.best_weights, weights_after[2], strict=True):
        np.testing.assert_array_equal(got, want)  # the best epoch's weights, from its checkpoint
    for got, want in zip(resumed_model.get_weights(), weights_after[5], strict=True):
        np.testing.assert_array_equal(got, want)  # and training goes on from the newest


@pytest.mark.parametrize(("keep_best", "kept"), [(True, [5, 4, 2]), (False, [5, 4])])
def test_the_best_epochs_checkpoint_is_kept_only_for_early_stopping(tmp_path, keep_best, kept):
    state = TrainState(tmp_path / "train_state", "fingerprint", keep_best=keep_best)
    state.start("run-id")
    model = small_model(seed=0)
    with state.history_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        for epoch, accuracy in enumerate(VAL_ACCURACY, start=1):
            writer.writerow({"epoch": epoch, "val_accuracy": accuracy})
            fh.flush()
            state.save_checkpoint(model, epoch)
    assert [epoch for epoch, _ in state.checkpoints()] == kept


def test_a_resumed_plateau_schedule_without_early_stopping_keeps_its_learning_rate(tmp_path):
    """The checkpoint restores the halved rate, and without EarlyStopping no checkpoint is reloaded after
    the replay: each replayed epoch must run at its own recorded rate, or the plateau halves it twice."""
    state = TrainState(tmp_path / "train_state", "fingerprint")
    live_model = small_model(seed=0)
    live = stateful_pair(live_model, state, finished=0, early_stopping_patience=None)
    run_live(state, live_model, live)

    resumed_model = small_model(seed=99)
    assert state.restore(resumed_model) == 5
    assert learning_rate(resumed_model) == pytest.approx(0.05)  # restored with the weights
    resumed = stateful_pair(resumed_model, state, finished=5, early_stopping_patience=None)
    for callback in resumed:
        callback.on_train_begin()

    (live_plateau,), (plateau, _) = live, resumed
    assert learning_rate(resumed_model) == pytest.approx(learning_rate(live_model))
    assert (plateau.best, plateau.wait, plateau.cooldown_counter) == (
        live_plateau.best, live_plateau.wait, live_plateau.cooldown_counter)  # fmt: skip
