"""train: fit a model preset on the prepared training split, validating on the validation split only.

One MLflow run per trained model: created here, its id written into data/model/run.json for evaluate and
report. Every finished epoch is checkpointed under data/train_state/, so a killed run, rerun with the same
params and data, continues from its last finished epoch (in the same MLflow run) instead of restarting.
A tracking store that stops answering mid-training costs nothing: the epochs it missed are sent once it
answers again (at the end, or by the rerun). The test split is never read here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np

from stages import hardware, paths, timing, tracking
from stages.config import Params, load_params
from stages.errors import StageError, run_stage
from stages.io import atomic_path, load_json, load_npz, write_json
from stages.models import PRESETS, Settings, compiled_model

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_time_s")


class TrainState:
    """data/train_state/: checkpoints, the MLflow run id and the epoch history of an unfinished run.

    It is only resumed when its fingerprint (params, data, code-relevant settings) matches this run's.
    """

    KEEP = 2  # finished checkpoints kept: the newest, and one to fall back on if it proves unreadable

    def __init__(self, root: Path, fingerprint: str, keep_best: bool = False) -> None:
        """`keep_best`: also keep the best epoch's checkpoint, which a resumed EarlyStopping restores."""
        self.root = root
        self.keep_best = keep_best
        self.checkpoint_dir = root / "checkpoints"
        self.history_csv = root / "history.csv"
        self._fingerprint_file = root / "fingerprint"
        self._run_id_file = root / "run_id"
        self.fingerprint = fingerprint

    def stale_run_id(self) -> str | None:
        """If a different run left state behind, clear it and return that run's id (to mark it killed)."""
        if not self.root.exists():
            return None
        previous = self._fingerprint_file.read_text().strip() if self._fingerprint_file.exists() else None
        if previous == self.fingerprint:
            return None
        stale = self.run_id
        log.info("discarding checkpoints of an earlier run with other settings")
        self.clear()
        return stale

    @property
    def run_id(self) -> str | None:
        return self._run_id_file.read_text().strip() if self._run_id_file.exists() else None

    def start(self, run_id: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._fingerprint_file.write_text(self.fingerprint)
        self._run_id_file.write_text(run_id)

    def history(self) -> list[dict[str, float]]:
        """Finished epochs in order; an epoch recorded twice (killed before its checkpoint) counts once."""
        if not self.history_csv.exists():
            return []
        with self.history_csv.open(newline="") as fh:
            rows = {
                int(row["epoch"]): {key: float(value) for key, value in row.items() if value != ""}
                for row in csv.DictReader(fh)
            }
        return [rows[epoch] for epoch in sorted(rows)]

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Finished checkpoints, newest first. A name is only ever given to a completely written file."""
        found = [(int(p.name.split(".")[0].removeprefix("epoch-")), p)
                 for p in self.checkpoint_dir.glob("epoch-*.weights.h5")]  # fmt: skip
        return sorted(found, reverse=True)

    def save_checkpoint(self, model: keras.Model, epoch: int) -> None:
        """Model and optimizer weights after `epoch`, written under a temporary name and then renamed,
        so that a kill at any moment leaves the previous checkpoint whole (Keras' BackupAndRestore
        overwrites its one file in place, and a kill during that write loses the run's progress)."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for partial in self.checkpoint_dir.glob("partial-*"):
            partial.unlink()
        partial = self.checkpoint_dir / f"partial-{epoch:04d}.weights.h5"
        try:
            model.save_weights(partial)
            partial.replace(self.checkpoint_dir / f"epoch-{epoch:04d}.weights.h5")
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise StageError(
                f"cannot write the checkpoint of epoch {epoch} in {self.checkpoint_dir} ({exc}); free some "
                "space and rerun: training resumes from the last checkpoint written"
            ) from exc
        best = self.best_epoch() if self.keep_best else None
        for finished, old in self.checkpoints()[self.KEEP :]:
            if finished != best:
                old.unlink()

    def best_epoch(self) -> int | None:
        """The finished epoch with the best validation accuracy (training accuracy without a validation
        split), the first of equals: the one whose weights EarlyStopping restores at the end."""
        history = self.history()
        if not history:
            return None
        monitor = "val_accuracy" if "val_accuracy" in history[0] else "accuracy"
        return int(max(history, key=lambda row: row[monitor])["epoch"])

    def load(self, model: keras.Model, epoch: int) -> bool:
        """Load the model and optimizer weights after `epoch` into `model`, if kept and whole."""
        path = dict(self.checkpoints()).get(epoch)
        if path is None:
            return False
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(path)
        except Exception as exc:  # h5py and Keras raise OSError, ValueError... for a damaged file
            log.warning("checkpoint %s is unreadable (%s)", path.name, exc)
            return False
        return True

    def restore(self, model: keras.Model) -> int:
        """Load the newest readable checkpoint into `model`; the number of epochs it has finished."""
        for epoch, _ in self.checkpoints():
            if self.load(model, epoch):
                log.info("restored the weights after epoch %d", epoch)
                return epoch
        return 0


class EpochRecorder(keras.callbacks.Callback):
    """After each epoch: a history row and a checkpoint on disk (both survive a kill), then one batched
    MLflow call, which may fail without stopping the training."""

    def __init__(self, state: TrainState, run_id: str) -> None:
        super().__init__()
        self.state, self.run_id = state, run_id
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import mlflow

        row = {k: float(v) for k, v in (logs or {}).items() if k in HISTORY_FIELDS}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["epoch_time_s"] = round(time.perf_counter() - self._started, 3)
        new_file = not self.state.history_csv.exists()
        with self.state.history_csv.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
            if new_file:
                writer.writeheader()
            writer.writerow({"epoch": epoch + 1, **row})
        self.state.save_checkpoint(self.model, epoch + 1)  # after the history row: see history()
        try:
            mlflow.log_metrics(row, step=epoch + 1, run_id=self.run_id)
        except Exception as exc:
            if not tracking.is_store_error(exc):
                raise
            log.warning("epoch %d was not sent to MLflow (%s); it is kept on disk and sent later",
                        epoch + 1, tracking.describe(exc))  # fmt: skip


class ResumedCallbackState(keras.callbacks.Callback):
    """On a resumed run, bring EarlyStopping and ReduceLROnPlateau to where the killed run left them.

    `fit()` resets both at its start, so they would forget their best value, their patience counter and (for
    EarlyStopping) the best weights. Placed after them in the list, this feeds them the finished epochs'
    history rows once they have been reset: each row with the learning rate it was trained at, so the
    plateau callback lowers the rate exactly where it did before the kill.
    """

    def __init__(self, state: TrainState, stateful: list[keras.callbacks.Callback], finished: int) -> None:
        super().__init__()
        self.state, self.stateful, self.finished = state, stateful, finished

    def _replay(self, callbacks: list[keras.callbacks.Callback], *, learning_rates: bool) -> int:
        """Feed the finished epochs' history rows to `callbacks` (each at its own learning rate, if asked);
        how many rows there were."""
        rows = [row for row in self.state.history() if row["epoch"] <= self.finished]
        for row in rows:
            if learning_rates:
                self.model.optimizer.learning_rate = row["learning_rate"]
            for callback in callbacks:
                callback.on_epoch_end(int(row["epoch"]) - 1, dict(row))
        return len(rows)

    def early_stopping_ended_the_run(self, model: keras.Model) -> bool:
        """Whether EarlyStopping had already ended the killed run (killed while its model was saved).

        Then `fit()` must not be called for more epochs: Keras looks at `stop_training` only after a
        training step, so the resumed run would train a step and record an epoch the original never had.
        """
        stoppers = [cb for cb in self.stateful if isinstance(cb, keras.callbacks.EarlyStopping)]
        for stopper in stoppers:
            stopper.set_model(model)
            stopper.on_train_begin()
        self._replay(stoppers, learning_rates=False)
        return any(stopper.stopped_epoch for stopper in stoppers)

    def on_train_begin(self, logs: dict | None = None) -> None:
        plateau = any(isinstance(cb, keras.callbacks.ReduceLROnPlateau) for cb in self.stateful)
        replayed = self._replay(self.stateful, learning_rates=plateau)
        for callback in self.stateful:
            if isinstance(callback, keras.callbacks.EarlyStopping) and callback.restore_best_weights:
                self._best_weights_into(callback)
        log.info("replayed %d finished epochs into %s", replayed,
                 ", ".join(type(cb).__name__ for cb in self.stateful))  # fmt: skip

    def _best_weights_into(self, stopper: keras.callbacks.EarlyStopping) -> None:
        """The replay saw only the newest weights: fetch the best epoch's from its kept checkpoint."""
        best = stopper.best_epoch + 1
        if best == self.finished:
            return
        if self.state.load(self.model, best):
            stopper.best_weights = self.model.get_weights()
        else:
            log.warning(
                "the weights after epoch %d are gone; EarlyStopping restores the best of the rest", best
            )
            stopper.best, stopper.best_weights = None, None
        if not self.state.load(self.model, self.finished):
            raise StageError(f"the checkpoint of epoch {self.finished} vanished while resuming; rerun")


def parameter_counts(model: keras.Model) -> dict[str, int]:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}


def layer_summary(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=100)
    return "\n".join(lines) + "\n"


def fingerprint(params: Params, data_hash: str) -> str:
    relevant = {
        "seed": params.seed,
        "preprocess": params.preprocess.model_dump(),
        "train": params.train.model_dump(),
    }
    return hashlib.sha256(json.dumps([relevant, data_hash], sort_keys=True).encode()).hexdigest()


def callbacks_for(
    settings: Settings, state: TrainState, run_id: str, has_val: bool, finished_epochs: int = 0
) -> list[keras.callbacks.Callback]:
    monitor = "val_accuracy" if has_val else "accuracy"
    stateful: list[keras.callbacks.Callback] = []
    if settings.early_stopping_patience:
        stateful.append(
            keras.callbacks.EarlyStopping(  # modes stated: "auto" needs metrics built, and a resume
                monitor=monitor,  # replays epochs into them before the first step
                mode="max",
                patience=settings.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    if settings.schedule == "plateau":
        stateful.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor.replace("accuracy", "loss"), mode="min", factor=0.5, patience=2
            )
        )
    callbacks: list[keras.callbacks.Callback] = [EpochRecorder(state, run_id), *stateful]
    if stateful and finished_epochs:
        callbacks.append(ResumedCallbackState(state, stateful, finished_epochs))
    return callbacks


def _last_epoch(
    epochs: int, finished: int, callbacks: list[keras.callbacks.Callback], model: keras.Model
) -> int:
    """The epoch `fit()` trains up to: the finished ones only, if EarlyStopping had ended the run."""
    for callback in callbacks:
        if isinstance(callback, ResumedCallbackState) and callback.early_stopping_ended_the_run(model):
            log.info("EarlyStopping had ended this run after epoch %d: nothing more to train", finished)
            return finished
    return epochs


def log_model(model: keras.Model, example: np.ndarray, run_id: str, registered_name: str) -> str:
    """Log the model with its signature and an input example, and register it once per run.

    `mlflow.keras.log_model(input_example=...)` fails in MLflow 3 (it writes the example before creating
    its folder: mlflow/mlflow#16183), so the model is saved into a folder we create, logged as the run's
    `model` artifact and registered from there. A rerun of the same run adds no duplicate version.
    """
    import mlflow
    from mlflow.models import infer_signature

    client = mlflow.MlflowClient()
    existing = client.search_model_versions(f"name='{registered_name}' and run_id='{run_id}'")
    if existing:
        log.info("model already registered as %s version %s", registered_name, existing[0].version)
        return existing[0].version
    requirements = [f"{name}=={version}" for name, version in tracking.library_versions().items()]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        mlflow.keras.save_model(
            model,
            str(folder),
            # a direct call: predict() would build and trace a predict function (0.4 s) for two images
            signature=infer_signature(example, keras.ops.convert_to_numpy(model(example, training=False))),
            input_example=example,
            pip_requirements=requirements,
        )
        mlflow.log_artifacts(str(folder), artifact_path="model")
    version = mlflow.register_model(f"runs:/{run_id}/model", registered_name, tags={"run_id": run_id})
    log.info("registered %s version %s", registered_name, version.version)
    return version.version


def main() -> None:
    params = load_params()
    preset = PRESETS[params.train.model]
    settings = Settings.resolve(preset, params.train)
    meta = load_json(paths.prepared_meta(), produced_by="preprocess")
    device, scope = hardware.configure(params.train.mixed_precision)
    experiment_id = tracking.connect()  # fails in seconds if the store is unusable
    timing.lap("mlflow")
    train = load_npz(paths.prepared_split("train"), ("x", "y"), produced_by="preprocess")
    val = load_npz(paths.prepared_split("val"), ("x", "y"), produced_by="preprocess")
    val_or_none = val if len(val["x"]) else None
    state = TrainState(
        paths.TRAIN_STATE,
        fingerprint(params, meta["content_sha256"]),
        keep_best=bool(settings.early_stopping_patience),
    )
    timing.lap("load data")

    import mlflow

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_name = os.environ.get("DVC_EXP_NAME") or f"{preset.name}-{meta['dataset']}-{stamp}"
    try:
        run = mlflow.start_run(**_run_to_resume(state, experiment_id, run_name))
        state.start(run.info.run_id)
        mlflow.set_tags(tracking.lineage_tags(meta["content_sha256"], device) | {"preset": preset.name})
    except Exception as exc:
        if tracking.is_store_error(exc):
            raise tracking.store_failure("starting the MLflow run", exc) from exc
        raise
    run_id = run.info.run_id
    timing.lap("mlflow")
    try:
        with scope:
            model = compiled_model(preset, meta["dataset"], settings, len(train["x"]), seed=params.seed)
            finished_epochs = state.restore(model)
        timing.lap("compute")
        counts = parameter_counts(model)
        logged = dict(tracking.flatten(params.model_dump()))
        logged |= {f"effective.{k}": str(v) for k, v in asdict(settings).items()}
        logged |= {f"model.params.{k}": str(v) for k, v in counts.items()}
        tracking.check_no_secrets(logged)
        tracking.retrying(lambda: mlflow.log_params(logged), "logging the params")
        tracking.retrying(lambda: mlflow.log_text(layer_summary(model), "model_summary.txt"), "logging")
        timing.lap("mlflow")

        callbacks = callbacks_for(settings, state, run_id, val_or_none is not None, finished_epochs)
        model.fit(
            train["x"],
            train["y"],
            batch_size=settings.batch_size,
            epochs=_last_epoch(settings.epochs, finished_epochs, callbacks, model),
            initial_epoch=finished_epochs,
            validation_data=None if val_or_none is None else (val["x"], val["y"]),
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
        fit_s = timing.lap("fit")
        history = state.history()
        final = _final_metrics(model, history, val_or_none, settings.batch_size, counts)
        final["fit_time_s"] = round(fit_s, 2)  # model.fit's wall time, callbacks included (this process's)
        timing.lap("compute")
        # the local outputs first: they need no tracking store
        with atomic_path(paths.MODEL_DIR, directory=True) as staging:
            model.save(paths.model_file(staging))
            write_json(paths.run_record(staging), {"run_id": run_id, "experiment_id": experiment_id})
        _write_history_csv(history)
        write_json(paths.TRAIN_METRICS, final)
        timing.lap("save outputs")
        example = (val_or_none or train)["x"][:2]
        tracking.retrying(
            lambda: _complete_run(run_id, history, final, model, example, params.train.registered_model),
            "recording the trained model in MLflow",
        )
    except BaseException as exc:
        _end_run_quietly("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracking.retrying(lambda: mlflow.end_run("FINISHED"), "closing the MLflow run")
    timing.lap("mlflow")
    state.clear()
    log.info("trained %s in %.0f s: %s", preset.name, final["train_time_s"], final["val"])


def _complete_run(
    run_id: str,
    history: list[dict[str, float]],
    final: dict[str, Any],
    model: keras.Model,
    example: np.ndarray,
    registered_name: str,
) -> None:
    """Everything MLflow should hold once training has finished; safe to repeat after a failure."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    sent = {m.step for m in client.get_metric_history(run_id, "loss")}
    now = int(time.time() * 1000)
    missing = [
        Metric(key, value, now, int(row["epoch"]))
        for row in history
        if int(row["epoch"]) not in sent
        for key, value in row.items()
        if key != "epoch"
    ]
    if missing:
        log.info("sending %d epoch(s) that MLflow missed", len({m.step for m in missing}))
        client.log_batch(run_id, metrics=missing)
    mlflow.log_metrics({f"final_{k}": v for k, v in final.items() if isinstance(v, float | int)})
    mlflow.log_metrics(
        {f"final_{split}_{k}": v for split in ("train", "val") for k, v in final[split].items()}
    )
    log_model(model, example, run_id, registered_name)


def _end_run_quietly(status: str) -> None:
    """Mark the run as failed if the store answers; the stage's own error is the one to report."""
    import mlflow

    try:
        mlflow.end_run(status)
    except Exception as exc:
        log.info("could not mark the MLflow run %s: %s", status, tracking.describe(exc))


def _run_to_resume(state: TrainState, experiment_id: str, run_name: str) -> dict[str, str]:
    """`mlflow.start_run` arguments: the unfinished run of these checkpoints, or a new run."""
    if (stale := state.stale_run_id()) is not None:
        _mark_killed(stale)
    resumed = state.run_id
    if resumed is not None and _run_exists(resumed):
        log.info("resuming MLflow run %s from its last finished epoch", resumed)
        return {"run_id": resumed}
    if resumed is not None:
        log.info("the MLflow run %s of the checkpoints is not in this store; starting afresh", resumed)
        state.clear()
    return {"experiment_id": experiment_id, "run_name": run_name}


def _run_exists(run_id: str) -> bool:
    import mlflow

    try:
        mlflow.MlflowClient().get_run(run_id)
    except Exception:  # MlflowException(RESOURCE_DOES_NOT_EXIST), or a malformed id
        return False
    return True


def _mark_killed(run_id: str) -> None:
    import mlflow

    try:
        mlflow.MlflowClient().set_terminated(run_id, status="KILLED")
    except Exception as exc:  # the run may be gone from this store; nothing to mend then
        log.info("could not mark earlier run %s as killed: %s", run_id, exc)


def _final_metrics(
    model: keras.Model,
    history: list[dict[str, float]],
    val: dict | None,
    batch_size: int,
    counts: dict[str, int],
) -> dict[str, Any]:
    """Last epoch's training figures; validation figures of the final (with early stopping: best) weights."""
    if not history:
        raise StageError("training finished no epoch; rerun `dvc repro train`")
    last = history[-1]
    final: dict[str, Any] = {
        "train": {"loss": last["loss"], "accuracy": last["accuracy"]},
        "val": {},
        "epochs": len(history),
        "train_time_s": round(sum(row["epoch_time_s"] for row in history), 2),
        "params": counts,
    }
    if val is not None:
        loss, accuracy = model.evaluate(val["x"], val["y"], batch_size=max(batch_size, 512), verbose=0)
        final["val"] = {"loss": float(loss), "accuracy": float(accuracy)}
    return final


def _write_history_csv(history: list[dict[str, float]]) -> None:
    with atomic_path(paths.TRAIN_HISTORY) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({**row, "epoch": int(row["epoch"])})


if __name__ == "__main__":
    run_stage(main)
