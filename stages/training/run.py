"""The MLflow run of a training, from start to finish: created (or resumed after a kill), its params, its
epochs, its final figures, the model with its signature, and the registered version.

A tracking store that stops answering mid-training costs nothing: the epochs it missed are sent once it
answers again (at the end, or by the rerun). Only transient failures are waited for; anything else MLflow
refuses stops the stage with MLflow's own message.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from stages.core.config import Params
from stages.core.errors import StageError
from stages.core.io import file_digest
from stages.tracking import lineage, registry, store
from stages.tracking.lineage import library_versions
from stages.tracking.queries import MODEL_TAG
from stages.training.state import TrainState

log = logging.getLogger(__name__)


def fingerprint(params: Params, data_hash: str) -> str:
    """What makes two trainings the same, so that one may resume the other's checkpoints: the seed, the
    splits, the training settings and the data. Not the registered model's name, which is only a label."""
    relevant = {
        "seed": params.seed,
        "preprocess": params.preprocess.model_dump(),
        "train": params.train.model_dump(exclude={"registered_model"}),
    }
    return hashlib.sha256(json.dumps([relevant, data_hash], sort_keys=True).encode()).hexdigest()


def start(state: TrainState, experiment_id: str, run_name: str) -> str:
    """Start the run, or resume the unfinished run of these checkpoints; its id.

    Whether that run is still in the store decides what happens to the checkpoints: yes, resume them;
    no (another store, or deleted), start afresh; can't tell (the store did not answer), stop and keep them.
    """
    import mlflow

    if (stale := state.stale_run_id()) is not None:
        _mark_killed(stale)
    resumed = state.run_id
    arguments: dict[str, str] = {"experiment_id": experiment_id, "run_name": run_name}
    if resumed is not None:
        exists = store.run_exists(resumed)
        if exists is None:
            raise StageError(
                f"cannot tell whether the MLflow run {resumed} of the checkpoints in {state.root} is in the "
                f"store {store.redact(store.tracking_uri())}: it did not answer. The checkpoints are kept; "
                "rerun `dvc repro` once the store answers, and training resumes from them."
            )
        if exists:
            log.info("resuming MLflow run %s from its last finished epoch", resumed)
            arguments = {"run_id": resumed}
        else:
            log.info("the MLflow run %s of the checkpoints is not in this store; starting afresh", resumed)
            state.clear()
    run = store.retrying(lambda: mlflow.start_run(**arguments), "starting the MLflow run")
    state.start(run.info.run_id)
    return run.info.run_id


def log_params(run_id: str, params: dict[str, str]) -> None:
    """Log the params; on a resumed run only those not logged yet. MLflow refuses to change a logged
    param, so one edited since the run began (say `evaluate.*` after a kill) keeps the value the run
    started with, and the log says so."""
    import mlflow

    logged = store.retrying(lambda: mlflow.MlflowClient().get_run(run_id).data.params, "reading the run")
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
        store.retrying(lambda: mlflow.log_params(new, run_id=run_id), "logging the params")


def log_datasets(meta: dict[str, Any], splits: dict[str, dict[str, np.ndarray] | None]) -> None:
    """The prepared splits as the active run's inputs (training, validation, testing), each an MLflow
    dataset whose digest is its file's content hash; logging one again adds nothing."""
    import mlflow

    from stages.core import paths

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

    rows = [(layer.name, type(layer).__name__, str(tuple(layer.output.shape)), layer.count_params())
            for layer in model.layers]  # fmt: skip
    table = tabulate(rows, headers=("layer", "type", "output shape", "parameters"), intfmt=",",
                     colalign=("left", "left", "left", "right"))  # fmt: skip
    counts = parameter_counts(model)
    labels = {"total": "total", "trainable": "trainable", "non_trainable": "non-trainable"}
    totals = "\n".join(f"{label} parameters: {counts[key]:,}" for key, label in labels.items())
    return f'Model: "{model.name}"\n\n{table}\n\n{totals}\n'


def complete(
    run_id: str,
    history: tuple[dict[str, float], ...],
    final: dict[str, Any],
    model_file: Path,
    example: np.ndarray,
    class_names: list[str],
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
    if registry.logged_model(run_id) is None:
        log_model(model_file, example, class_names)
    registry.register(run_id, registered_name)


OUTPUT_SCHEMA = [
    ("class", "long", False),
    ("label", "string", False),
    ("confidence", "double", True),
    ("probabilities", "array", True),
    ("warning", "string", False),
]


def log_model(model_file: Path, example: np.ndarray, class_names: list[str]) -> str:
    """Log the active run's MLflow 3 logged model `model`: the Keras file behind `DigitClassifier`, which
    takes every input layout and request format the input rule allows; its output signature; an input
    example. Returns the model's URI.

    The class is pickled by value with the input rule (stages/serving/, which imports nothing else of this
    project), so the model is served without this project installed. The signature declares no input
    schema on purpose: MLflow would enforce one layout and refuse the others; our rule checks each input.
    """
    import cloudpickle
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    from stages.serving import digits, pyfunc

    columns = [
        ColSpec(Array(DataType.double) if kind == "array" else kind, name, required=required)
        for name, kind, required in OUTPUT_SCHEMA
    ]
    requirements = [f"{name}=={version}" for name, version in library_versions().items()]
    requirements += [f"{name}=={importlib.metadata.version(name)}" for name in ("mlflow", "pandas", "pillow")]
    for module in (digits, pyfunc):
        cloudpickle.register_pickle_by_value(module)
    try:
        with pyfunc.no_type_hint_warning():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=pyfunc.DigitClassifier(),
                artifacts={"keras_model": str(model_file)},
                model_config={"class_names": class_names},
                signature=ModelSignature(outputs=Schema(columns)),
                input_example=example,
                pip_requirements=requirements,
            )
    finally:
        for module in (digits, pyfunc):
            cloudpickle.unregister_pickle_by_value(module)
    return info.model_uri


def end_quietly(status: str) -> None:
    """Mark the run as failed if the store answers; the stage's own error is the one to report."""
    import mlflow

    try:
        mlflow.end_run(status)
    except Exception as exc:
        log.info("could not mark the MLflow run %s: %s", status, store.describe(exc))


def _mark_killed(run_id: str) -> None:
    import mlflow

    try:
        mlflow.MlflowClient().set_terminated(run_id, status="KILLED")
    except Exception as exc:  # best effort: the run may be gone from this store
        log.info("could not mark earlier run %s as killed: %s", run_id, store.describe(exc))
