"""What a training must remember to survive a kill, as plain data, and the rules that act on it.

`ResumeState` (finished epochs, the history, early stopping's best value and patience counter, the
plateau schedule's counter and the learning rate) is saved beside every checkpoint, as nanoGPT keeps
`iter_num` and `best_val_loss` in its checkpoint. Early stopping, the plateau schedule and the best-epoch
choice are small functions of it that give Keras' EarlyStopping and ReduceLROnPlateau decisions
(tests/test_resume_state.py holds them against Keras' own callbacks on the same histories); a resumed
run simply loads the state of its newest checkpoint and goes on.

On disk, under data/train_state/ (not a DVC output):
    fingerprint.json, run_id             which training and which MLflow run the state belongs to
    checkpoints/epoch-NNNN.weights.h5    model and optimizer weights after epoch NNNN
    states/epoch-NNNN.json               the ResumeState after epoch NNNN (written before the weights)
    history.csv                          the finished epochs, for people watching a long run
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras

from stages.core import paths
from stages.core.errors import StageError
from stages.core.io import atomic_path, write_json
from stages.training.fingerprint import differences

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_time_s")


@dataclass(frozen=True)
class Rules:
    """The decisions a training makes after each epoch, from its settings.

    Early stopping watches `monitor` (higher is better) with `patience`; the plateau schedule watches its
    loss counterpart (lower is better, by more than `plateau_min_delta`) and multiplies the learning rate
    by `plateau_factor` after `plateau_patience` epochs without improvement, as Keras' defaults do.
    """

    monitor: str = "val_accuracy"
    patience: int | None = None
    plateau: bool = False
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    plateau_min_delta: float = 1e-4

    @property
    def plateau_monitor(self) -> str:
        return self.monitor.replace("accuracy", "loss")


@dataclass(frozen=True)
class ResumeState:
    """Everything a resumed run needs besides the weights. JSON-serialisable."""

    epoch: int = 0  # finished epochs
    history: tuple[dict[str, float], ...] = ()
    learning_rate: float | None = None  # the rate the next epoch trains at (the plateau schedule's)
    best: float | None = None  # early stopping: the best monitored value so far, and its epoch
    best_epoch: int | None = None
    wait: int = 0  # early stopping: epochs since the best
    stopped: bool = False  # early stopping ended the run
    plateau_best: float | None = None
    plateau_wait: int = 0

    def to_dict(self) -> dict:
        return asdict(self) | {"history": list(self.history)}

    @classmethod
    def from_dict(cls, data: dict) -> ResumeState:
        return cls(**data | {"history": tuple(data.get("history", ()))})


def early_stopping(state: ResumeState, value: float, epoch: int, patience: int) -> ResumeState:
    """Keras' EarlyStopping(mode="max", min_delta=0) after `epoch` (1-based): a better value resets the
    wait; `patience` epochs without one end the run, never after the first epoch."""
    if state.best is None or value > state.best:
        return replace(state, best=value, best_epoch=epoch, wait=0)
    wait = state.wait + 1
    return replace(state, wait=wait, stopped=wait >= patience and epoch > 1)


def plateau(state: ResumeState, value: float, learning_rate: float, rules: Rules) -> ResumeState:
    """Keras' ReduceLROnPlateau(mode="min", cooldown=0, min_lr=0): the learning rate for the next epoch."""
    if state.plateau_best is None or value + rules.plateau_min_delta < state.plateau_best:
        return replace(state, plateau_best=value, plateau_wait=0, learning_rate=learning_rate)
    wait = state.plateau_wait + 1
    if wait >= rules.plateau_patience:
        return replace(state, plateau_wait=0, learning_rate=learning_rate * rules.plateau_factor)
    return replace(state, plateau_wait=wait, learning_rate=learning_rate)


def advance(state: ResumeState, row: dict[str, float], rules: Rules) -> ResumeState:
    """The state after one more finished epoch, whose figures (and learning rate) are `row`."""
    epoch = state.epoch + 1
    state = replace(state, epoch=epoch, history=(*state.history, {"epoch": epoch, **row}))
    if rules.patience and rules.monitor in row:
        state = early_stopping(state, row[rules.monitor], epoch, rules.patience)
    if rules.plateau and rules.plateau_monitor in row:
        state = plateau(state, row[rules.plateau_monitor], row["learning_rate"], rules)
    return state


def best_epoch(state: ResumeState, rules: Rules) -> int | None:
    """The epoch whose weights the run ends with, when early stopping may have passed it by: the best
    monitored one, the first of equals (as EarlyStopping's `restore_best_weights`)."""
    return state.best_epoch if rules.patience else None


class TrainState:
    """data/train_state/: the checkpoints, their ResumeStates and the MLflow run id of an unfinished run.

    It is only resumed when its fingerprint (stages/training/fingerprint.py: the settings in effect, the
    architecture, the data and the declared code) matches this run's; otherwise it is set aside.
    A checkpoint exists once its weights file has its final name; its state was written before that.
    """

    KEEP = 2  # finished checkpoints kept: the newest, and one to fall back on if it proves unreadable

    def __init__(self, root: Path, fingerprint: Mapping[str, str] | str, keep_best: bool = False) -> None:
        """`keep_best`: also keep the best epoch's checkpoint, which early stopping ends the run with."""
        self.root = root
        self.fingerprint = dict(fingerprint) if isinstance(fingerprint, Mapping) else {"all": fingerprint}
        self.keep_best = keep_best
        self.checkpoint_dir = root / "checkpoints"
        self.state_dir = root / "states"
        self.history_csv = root / "history.csv"
        self.set_aside_dir = root.with_name(f"{root.name}.set-aside")
        self._fingerprint_file = root / "fingerprint.json"
        self._run_id_file = root / "run_id"

    def exists(self) -> bool:
        return self.root.exists()

    def differing_parts(self) -> list[str]:
        """The fingerprint parts in which the state on disk differs from this training (all, if unknown)."""
        try:
            recorded = json.loads(self._fingerprint_file.read_text())
        except (OSError, ValueError):
            recorded = None
        return differences(recorded if isinstance(recorded, dict) else None, self.fingerprint)

    def set_aside(self, why: str) -> str | None:
        """Move the state to data/train_state.set-aside (replacing an older one there), saying `why` in one
        line; return the MLflow run id it belonged to, so that run can be marked killed."""
        stale = self.run_id
        shutil.rmtree(self.set_aside_dir, ignore_errors=True)
        self.root.replace(self.set_aside_dir)
        log.warning(
            "set the checkpoints of MLflow run %s aside in %s: %s; training starts afresh in a new "
            "MLflow run",
            stale,
            self.set_aside_dir,
            why,
        )
        return stale

    @property
    def run_id(self) -> str | None:
        return self._run_id_file.read_text().strip() if self._run_id_file.exists() else None

    def start(self, run_id: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self._fingerprint_file, self.fingerprint)
        self._run_id_file.write_text(run_id)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Finished checkpoints, newest first. A name is only ever given to a completely written file."""
        found = [
            (int(p.name.split(".")[0].removeprefix("epoch-")), p)
            for p in self.checkpoint_dir.glob("epoch-*.weights.h5")
        ]
        return sorted(found, reverse=True)

    def _state_file(self, epoch: int) -> Path:
        return self.state_dir / f"epoch-{epoch:04d}.json"

    def save(self, model: keras.Model, state: ResumeState, rules: Rules) -> None:
        """The weights and the state after `state.epoch`: the state first, then the weights under a
        temporary name renamed into place, so a kill at any moment leaves the previous checkpoint whole
        (Keras' BackupAndRestore overwrites its one file in place, and a kill then loses the run)."""
        epoch = state.epoch
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for partial in self.checkpoint_dir.glob("partial-*"):
            partial.unlink()
        partial = self.checkpoint_dir / f"partial-{epoch:04d}.weights.h5"
        try:
            write_json(self._state_file(epoch), state.to_dict())
            model.save_weights(partial)
            partial.replace(self.checkpoint_dir / f"epoch-{epoch:04d}.weights.h5")
        except (OSError, StageError) as exc:
            partial.unlink(missing_ok=True)
            resumes = (
                "training resumes from the last checkpoint written"
                if paths.checkpoints_outlive_the_run()
                else "training starts over"
            )
            raise StageError(
                f"cannot write the checkpoint of epoch {epoch} in {self.root} ({exc}); free some space and "
                f"rerun: {resumes}"
            ) from exc
        self._write_history(state.history)
        best = best_epoch(state, rules) if self.keep_best else None
        for finished, old in self.checkpoints()[self.KEEP :]:
            if finished != best:
                old.unlink()
                self._state_file(finished).unlink(missing_ok=True)

    def _write_history(self, history: tuple[dict[str, float], ...]) -> None:
        with atomic_path(self.history_csv) as tmp, tmp.open("w", newline="") as fh:
            write_history(fh, history)

    def load_weights(self, model: keras.Model, epoch: int) -> bool:
        """Load the model and optimizer weights after `epoch` into `model`, if kept and whole."""
        path = dict(self.checkpoints()).get(epoch)
        if path is None:
            return False
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(path)
        except (OSError, ValueError, KeyError) as exc:  # h5py's and Keras' errors for a damaged file; any
            # other exception is a bug in the code, and stops the stage with its traceback
            log.warning("checkpoint %s is unreadable (%s)", path.name, exc)
            return False
        return True

    def restore(self, model: keras.Model) -> ResumeState:
        """Load the newest readable checkpoint into `model` and return its state (a fresh one if none)."""
        for epoch, _ in self.checkpoints():
            try:
                state = ResumeState.from_dict(json.loads(self._state_file(epoch).read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("the state of epoch %d is unreadable (%s)", epoch, exc)
                continue
            if self.load_weights(model, epoch):
                log.info("restored the weights after epoch %d", epoch)
                return state
        return ResumeState()


def write_history(fh, history: tuple[dict[str, float], ...] | list[dict[str, float]]) -> None:
    """The epochs as CSV rows (metrics/train_history.csv and the progress log share the format), without
    their wall times: the file is a DVC output, and its hash must not depend on the clock."""
    writer = csv.DictWriter(
        fh, fieldnames=[f for f in HISTORY_FIELDS if f != "epoch_time_s"], extrasaction="ignore"
    )
    writer.writeheader()
    for row in history:
        writer.writerow({**row, "epoch": int(row["epoch"])})
