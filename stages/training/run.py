"""The MLflow run of a training, from start to finish: created (or resumed after a kill), its params, its
epochs and its final figures. (The model logged for serving, its evaluation and its registered version are
added by the stages after train: package and report.)

A tracking store that stops answering mid-training costs nothing: the epochs it missed are sent once it
answers again (at the end, or by the rerun). Only transient failures are waited for; anything else MLflow
refuses stops the stage with MLflow's own message.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from stages.core import paths
from stages.core.errors import StageError
from stages.core.io import file_digest
from stages.tracking import lineage, store
from stages.tracking.queries import MODEL_TAG
from stages.training import fingerprint
from stages.training.state import ResumeState, TrainState

log = logging.getLogger(__name__)


START_ATTEMPT_TAG = "mnist.start_attempt"  # set by the client on a new run, to find it after a lost answer


def resume_or_start(
    checkpoints: TrainState, model: keras.Model, rebuild: Callable[[], keras.Model]
) -> tuple[keras.Model, ResumeState, str | None, str | None]:
    """The model to train (`model`, freshly built, or rebuilt by `rebuild`), its ResumeState, the MLflow
    run to resume (or None: a new one) and an earlier run whose checkpoints were set aside (to mark
    killed), deciding from the checkpoints on disk:

    - none: a fresh model;
    - another training's (any fingerprint part differs): set aside, a fresh model, a new run;
    - this training's, and its run is in the store: the newest readable checkpoint, in that run;
      if none can be read, they are set aside and training starts afresh in a new run (never epoch 0
      again inside the old one, which would then hold each early epoch twice);
    - this training's, but its run is not in this store (another store, or deleted): cleared, afresh;
    - the store cannot say: stop, keeping them.
    """
    if not checkpoints.exists():
        return model, ResumeState(), None, None
    if differing := checkpoints.differing_parts():
        return model, ResumeState(), None, checkpoints.set_aside(fingerprint.describe(differing))
    run_id = checkpoints.run_id
    exists = store.run_exists(run_id) if run_id is not None else False
    if exists is None:
        kept = (
            "The checkpoints are kept; rerun `dvc repro` once the store answers: training resumes from them."
            if paths.checkpoints_outlive_the_run()
            else f"{paths.TEMPORARY_COPY}; rerun once the store answers."
        )
        raise StageError(
            f"cannot tell whether the MLflow run {run_id} of the checkpoints in {checkpoints.root} is in the "
            f"store {store.redact(store.tracking_uri())}: it did not answer. {kept}"
        )
    if not exists:
        log.info("the MLflow run %s of the checkpoints is not in this store; starting afresh", run_id)
        checkpoints.clear()
        return model, ResumeState(), None, None
    if not checkpoints.checkpoints():  # killed before its first epoch ended: nothing was logged
        checkpoints.clear()
        return model, ResumeState(), None, run_id
    state = checkpoints.restore(model)
    if state.epoch == 0:
        stale = checkpoints.set_aside("none of its checkpoints could be read")
        return rebuild(), ResumeState(), None, stale  # a failed load may have changed some weights
    return model, state, run_id, None


def open_run(experiment_id: str, run_name: str, resumed: str | None, stale: str | None, kept: str) -> str:
    """Resume the run `resumed`, or create a new one, once; mark `stale` (a set-aside run) killed. Its id.

    Creating a run is not idempotent: after an attempt whose answer was lost, the run is looked up by a
    tag this client set, and created only if it is not there."""
    import mlflow

    if stale is not None:
        _mark_killed(stale)
    if resumed is not None:
        log.info("resuming MLflow run %s from its last finished epoch", resumed)
        run = store.retrying(lambda: mlflow.start_run(run_id=resumed), "resuming the MLflow run", kept=kept)
        return run.info.run_id
    token = uuid.uuid4().hex

    def find() -> Any:
        found = mlflow.MlflowClient().search_runs(
            [experiment_id], filter_string=f"tags.`{START_ATTEMPT_TAG}` = '{token}'", max_results=1
        )
        return mlflow.start_run(run_id=found[0].info.run_id) if found else None

    run = store.create_once(
        lambda: mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags={START_ATTEMPT_TAG: token}
        ),
        find,
        "starting the MLflow run",
        kept=kept,
    )
    return run.info.run_id


def log_params(run_id: str, params: dict[str, str], kept: str = store.NOTHING_TO_LOSE) -> None:
    """Log the params; on a resumed run only those not logged yet. MLflow refuses to change a logged
    param, so one edited since the run began (say `evaluate.*` after a kill) keeps the value the run
    started with, and the log says so."""
    import mlflow

    logged = store.retrying(
        lambda: mlflow.MlflowClient().get_run(run_id).data.params, "reading the run", kept=kept
    )
    changed = {
        key: (logged[key], value) for key, value in params.items() if key in logged and logged[key] != value
    }
    if changed:
        log.warning(
            "params edited since this run began (MLflow keeps the first values; a fresh run needs "
            "`dvc repro --force train`): %s",
            ", ".join(f"{key} {old} -> {new}" for key, (old, new) in sorted(changed.items())),
        )
    new = {key: value for key, value in params.items() if key not in logged}
    if new:
        store.retrying(lambda: mlflow.log_params(new, run_id=run_id), "logging the params", kept=kept)


def log_datasets(meta: dict[str, Any], splits: dict[str, dict[str, np.ndarray] | None]) -> None:
    """The prepared splits as the active run's inputs (training, validation, testing), each an MLflow
    dataset whose digest is its file's content hash; logging one again adds nothing."""
    import mlflow

    for split, arrays in splits.items():
        if arrays is not None:
            labels = arrays["label"] if "label" in arrays else arrays["y"].argmax(axis=1)
            source = str(paths.prepared_split(split))
            dataset = lineage.split_dataset(meta, split, source, (arrays["x"], labels))
            mlflow.log_input(dataset, context=lineage.SPLIT_CONTEXTS[split])


def parameter_counts(model: keras.Model) -> dict[str, int]:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}


def layer_summary(model: keras.Model) -> str:
    """Every layer with its type, output shape and parameter count, then the totals: a plain-text table
    as wide as it needs. (Keras' own summary fits itself to the console, 80 columns in a pipe, and there
    drops the parameter column.)"""
    from tabulate import tabulate

    rows = [
        (layer.name, type(layer).__name__, str(tuple(layer.output.shape)), layer.count_params())
        for layer in model.layers
    ]
    table = tabulate(
        rows,
        headers=("layer", "type", "output shape", "parameters"),
        intfmt=",",
        colalign=("left", "left", "left", "right"),
    )
    counts = parameter_counts(model)
    labels = {"total": "total", "trainable": "trainable", "non_trainable": "non-trainable"}
    totals = "\n".join(f"{label} parameters: {counts[key]:,}" for key, label in labels.items())
    return f'Model: "{model.name}"\n\n{table}\n\n{totals}\n'


def complete(
    run_id: str,
    history: tuple[dict[str, float], ...],
    final: dict[str, Any],
    model_file: Path,
) -> None:
    """Everything MLflow should hold of the training once it has finished (the package stage adds the logged
    model, report the evaluation and the registered version); safe to repeat after a failure."""
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
    mlflow.log_metrics(
        {f"final_{k}": v for k, v in final.items() if isinstance(v, float | int)}, run_id=run_id
    )
    mlflow.log_metrics(
        {f"final_{split}_{k}": v for split in ("train", "val") for k, v in final[split].items()},
        run_id=run_id,
    )
    client.set_tag(
        run_id, MODEL_TAG, file_digest(model_file)
    )  # how a clone that pulled the model finds its run


def end_quietly(status: str) -> None:
    """Mark the run as failed if the store answers; the stage's own error is the one to report."""
    import mlflow

    try:
        mlflow.end_run(status)
    except Exception as exc:
        log.info("could not mark the MLflow run %s: %s", status, store.describe(exc))


def mark_pruned() -> None:
    """Tag the active run as a pruned trial (its status becomes KILLED), if the store answers."""
    import mlflow

    from stages.tracking.trial import STATE_TAG

    try:
        mlflow.set_tag(STATE_TAG, "PRUNED")
    except Exception as exc:
        log.info("could not tag the MLflow run as pruned: %s", store.describe(exc))


def _mark_killed(run_id: str) -> None:
    import mlflow

    try:
        mlflow.MlflowClient().set_terminated(run_id, status="KILLED")
    except Exception as exc:  # best effort: the run may be gone from this store
        log.info("could not mark earlier run %s as killed: %s", run_id, store.describe(exc))
