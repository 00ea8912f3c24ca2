"""package: train's model made ready to serve, once it is adopted (a search's trials end at train).

Converts data/model/model.keras to LiteRT (data/model/model.tflite and its .sha256), refused unless it answers
the test images as the Keras model does, and logs the MLflow model of the training run: the LiteRT file
behind the served code (stages/serving/), its signature and an input example, again whenever what it
serves changes. metrics/served.json names what it serves; report, which depends on it, registers it.

A stage of its own so that an edit to the serving code repackages the same weights, without retraining
or touching train's checkpoints. It reruns after every training, since metrics/train.json names what train
was made from: a new MLflow run whose model came out byte for byte the same still gets its logged model.
"""

from __future__ import annotations

import logging

import numpy as np

from stages.core import paths, timing
from stages.core.io import load_json, load_model, write_json
from stages.core.runner import run_stage
from stages.data.npz import load_npz
from stages.serving.export import save_lite
from stages.serving.lite import record_digest
from stages.serving.logged import current_model, log_model, serving_digest
from stages.tracking import queries, store

log = logging.getLogger(__name__)


def main() -> None:
    class_names: list[str] = load_json(paths.prepared_meta(), produced_by="preprocess")["class_names"]
    images = load_npz(paths.prepared_split("test"), ("x",), produced_by="preprocess")["x"]
    model = load_model(paths.model_file())
    timing.lap("load data")

    save_lite(model, paths.model_file(), paths.lite_file(), images)
    record_digest(paths.lite_file())
    timing.lap("save outputs")

    store.connect()
    run_id = queries.model_run_id()
    digest = serving_digest(paths.lite_file(), paths.model_file())
    if current_model(run_id, digest) is None:
        example = np.round(images[:2, ..., 0] * 255).astype(np.uint8)  # as a client would send them
        store.retrying(
            lambda: log_model(run_id, paths.model_file(), example, class_names, digest),
            "logging the model in MLflow",
        )
        log.info("logged the served model in MLflow run %s", run_id)
    timing.lap("mlflow")
    # what report registers: it reruns when this changes (a new model, or new serving code)
    write_json(paths.SERVED_RECORD, {"serving_sha256": digest})


if __name__ == "__main__":
    run_stage(main, tensorflow=True)
