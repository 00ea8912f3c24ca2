"""The resume state's rules against Keras' own callbacks, and its round trip through a checkpoint.

Early stopping and the plateau schedule are functions of `ResumeState` (stages/training/state.py). Here
Keras' EarlyStopping and ReduceLROnPlateau, configured as the train stage's settings describe them, see
the same histories as the reference: every epoch's decision (stop, the learning rate, the best epoch)
must be the same. Then a state saved with a checkpoint and restored must carry on exactly as an
uninterrupted one.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.training.state import ResumeState, Rules, TrainState, advance, best_epoch

VAL_LOSS = [1.0, 0.8, 0.85, 0.9, 0.95]  # best at epoch 2, then stalling: the plateau halves the rate
VAL_ACCURACY = [0.50, 0.70, 0.65, 0.60, 0.60]  # best at epoch 2


def small_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


def learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def keras_reference(losses, accuracies, patience: int, plateau_patience: int = 2):
    """Keras' callbacks as an uninterrupted fit() drives them: per epoch, (stop, learning rate after it,
    best epoch so far)."""
    model = small_model(seed=0)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", mode="max", patience=patience, restore_best_weights=True
    )
    schedule = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", mode="min", factor=0.5, patience=plateau_patience
    )
    decisions = []
    for callback in (stopper, schedule):
        callback.set_model(model)
        callback.on_train_begin()
    for epoch, (loss, accuracy) in enumerate(zip(losses, accuracies, strict=True)):
        model.stop_training = False
        logs = {"val_loss": loss, "val_accuracy": accuracy}
        stopper.on_epoch_end(epoch, dict(logs))
        schedule.on_epoch_end(epoch, dict(logs))
        decisions.append((model.stop_training, learning_rate(model), stopper.best_epoch + 1))
    return decisions


def ours(losses, accuracies, patience: int, plateau_patience: int = 2):
    rules = Rules(monitor="val_accuracy", patience=patience, plateau=True, plateau_patience=plateau_patience)
    state, rate, decisions = ResumeState(), 0.1, []
    for loss, accuracy in zip(losses, accuracies, strict=True):
        row = {"val_loss": loss, "val_accuracy": accuracy, "learning_rate": rate}
        state = advance(state, row, rules)
        rate = float(np.float32(state.learning_rate))  # the optimizer keeps it as float32
        decisions.append((state.stopped, rate, best_epoch(state, rules)))
    return decisions


def until_stopped(decisions):
    """A training ends at its first stop: later epochs never happen."""
    stops = [i for i, (stopped, _, _) in enumerate(decisions) if stopped]
    return decisions[: stops[0] + 1] if stops else decisions


def test_early_stopping_and_the_plateau_decide_as_keras_callbacks_do():
    assert ours(VAL_LOSS, VAL_ACCURACY, patience=4) == keras_reference(VAL_LOSS, VAL_ACCURACY, patience=4)
    # halved once after epoch 4 (two epochs without a better loss after epoch 2), and no stop in five
    assert ours(VAL_LOSS, VAL_ACCURACY, patience=4)[-1] == (False, pytest.approx(0.05), 2)
    assert ours(VAL_LOSS, VAL_ACCURACY, patience=2)[3][0]  # patience 2: stops after epoch 4


# rounded, so that ties happen, and values within the plateau's min_delta (1e-4) of each other
metric = st.floats(0.0, 1.0, allow_nan=False).map(lambda v: round(v, 2)) | st.sampled_from(
    [0.5, 0.49995, 0.49990, 0.4998, 0.50005]
)


@settings(max_examples=100, deadline=None)
@given(
    histories=st.lists(st.tuples(metric, metric), min_size=1, max_size=12),
    patience=st.integers(1, 4),
    plateau_patience=st.integers(1, 3),
)
def test_any_history_gives_the_decisions_of_keras_callbacks(histories, patience, plateau_patience):
    losses, accuracies = zip(*histories, strict=True)
    assert until_stopped(ours(losses, accuracies, patience, plateau_patience)) == until_stopped(
        keras_reference(losses, accuracies, patience, plateau_patience)
    )


def run_epochs(train_state: TrainState, model: keras.Model, rules: Rules, epochs: range, state=None):
    """Epochs of "training" (new weights each) recorded as the train stage's EpochEnd does; the weights
    after each, and the final state."""
    state = state or ResumeState()
    weights_after = {}
    for epoch in epochs:
        model.set_weights([w + epoch for w in small_model(seed=epoch).get_weights()])
        weights_after[epoch] = model.get_weights()
        row = {
            "val_loss": VAL_LOSS[epoch - 1],
            "val_accuracy": VAL_ACCURACY[epoch - 1],
            "learning_rate": learning_rate(model),
        }
        state = advance(state, row, rules)
        if rules.plateau:
            model.optimizer.learning_rate = state.learning_rate
        train_state.save(model, state, rules)
    return weights_after, state


def test_a_resumed_state_carries_on_as_an_uninterrupted_one(tmp_path):
    rules = Rules(monitor="val_accuracy", patience=4, plateau=True)
    live_state = TrainState(tmp_path / "live", "fingerprint", keep_best=True)
    live_model = small_model(seed=0)
    _, uninterrupted = run_epochs(live_state, live_model, rules, range(1, 6))

    killed = TrainState(tmp_path / "killed", "fingerprint", keep_best=True)
    weights_after, _ = run_epochs(killed, small_model(seed=0), rules, range(1, 4))  # killed after epoch 3
    resumed_model = small_model(seed=99)
    state = killed.restore(resumed_model)
    assert state.epoch == 3
    for got, want in zip(resumed_model.get_weights(), weights_after[3], strict=True):
        np.testing.assert_array_equal(got, want)  # training goes on from the newest checkpoint
    _, resumed = run_epochs(killed, resumed_model, rules, range(4, 6), state)

    assert resumed == uninterrupted  # best, wait, learning rate, history: all as if never killed
    assert learning_rate(resumed_model) == pytest.approx(learning_rate(live_model)) == pytest.approx(0.05)
    assert killed.load_weights(resumed_model, best_epoch(resumed, rules))  # the best epoch's is kept
    for got, want in zip(resumed_model.get_weights(), weights_after[2], strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_state_round_trips_through_json():
    rules = Rules(monitor="val_accuracy", patience=2, plateau=True)
    state = ResumeState()
    for loss, accuracy in zip(VAL_LOSS, VAL_ACCURACY, strict=True):
        state = advance(state, {"val_loss": loss, "val_accuracy": accuracy, "learning_rate": 0.1}, rules)
    assert ResumeState.from_dict(state.to_dict()) == state


@pytest.mark.parametrize(("keep_best", "kept"), [(True, [5, 4, 2]), (False, [5, 4])])
def test_the_best_epochs_checkpoint_is_kept_only_for_early_stopping(tmp_path, keep_best, kept):
    rules = Rules(monitor="val_accuracy", patience=10 if keep_best else None)
    train_state = TrainState(tmp_path / "train_state", "fingerprint", keep_best=keep_best)
    train_state.start("run-id")
    run_epochs(train_state, small_model(seed=0), rules, range(1, 6))
    assert [epoch for epoch, _ in train_state.checkpoints()] == kept
    assert sorted(p.name for p in train_state.state_dir.iterdir()) == [
        f"epoch-{e:04d}.json" for e in sorted(kept)
    ]


def test_only_a_checkpoint_that_cannot_be_decoded_counts_as_unreadable(tmp_path, monkeypatch):
    """A damaged file is skipped for the one before it; any other error is a bug, and stops the stage
    with its traceback instead of silently setting the checkpoints aside and training again."""
    rules = Rules(monitor="val_accuracy", patience=None)
    train_state = TrainState(tmp_path / "train_state", "fingerprint")
    run_epochs(train_state, small_model(seed=0), rules, range(1, 3))
    newest = dict(train_state.checkpoints())[2]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated: h5py cannot decode it
    assert train_state.restore(small_model(seed=99)).epoch == 1

    def a_bug(self, path):
        raise TypeError("load_weights() got an unexpected keyword argument")

    monkeypatch.setattr(keras.Model, "load_weights", a_bug)
    with pytest.raises(TypeError, match="unexpected keyword"):
        train_state.restore(small_model(seed=99))
