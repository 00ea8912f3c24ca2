"""evaluate: the trained model on the test split (no stage before it reads the test labels), run as
mnist-predict and the served model run it: its LiteRT form, which package checked against the Keras model
on this split. So no TensorFlow here.

Writes metrics/eval.json (the DVC metric), the per-class table, the
confusion matrix, a grid of the most confident mistakes (stages/evaluation/), and each test image's
prediction (metrics/predictions.npz), which `mnist-promote` and the report pair with the champion's.
No MLflow here: report records them in the training run.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from stages.core import paths, timing
from stages.core.config import load_params
from stages.core.errors import StageError
from stages.core.io import atomic_path, load_json, write_json
from stages.core.runner import run_stage
from stages.data.npz import load_npz
from stages.evaluation.figures import save_confusion, save_misclassified
from stages.evaluation.metrics import evaluate
from stages.evaluation.paired import Predictions, content_digest
from stages.serving.lite import LiteModel

log = logging.getLogger(__name__)


def load_lite_model() -> LiteModel:
    path = paths.lite_file()
    if not path.exists():
        raise StageError(f"{path} is missing: rerun `dvc repro package` to rebuild it")
    try:
        return LiteModel(path)
    except (OSError, ValueError, RuntimeError) as exc:  # the interpreter's errors for a damaged file
        raise StageError(f"{path} is corrupt or unreadable ({exc}): rerun `dvc repro package`") from exc


def main() -> None:
    params = load_params()
    meta = load_json(paths.prepared_meta(), produced_by="preprocess")
    class_names: list[str] = meta["class_names"]
    model = load_lite_model()
    test = load_npz(paths.prepared_split("test"), ("x", "label"), produced_by="preprocess")
    labels = test["label"].astype(np.int64)
    timing.lap("load data")

    probabilities = model.probabilities(test["x"]).astype(np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 +- 1e-7
    results = evaluate(probabilities, labels, class_names)
    split = content_digest(test["x"], test["label"])
    predictions = Predictions.from_probabilities(probabilities, labels, f"{meta['dataset']}/test", split)
    predicted = probabilities.argmax(axis=1)
    timing.lap("compute")

    per_class = pd.DataFrame.from_dict(results["per_class"], orient="index").rename_axis("class")
    with atomic_path(paths.PER_CLASS) as tmp:
        per_class.to_csv(tmp, float_format="%.4f")
    save_confusion(labels, predicted, class_names)
    save_misclassified(test["x"], labels, probabilities, class_names, params.evaluate.misclassified_examples)
    predictions.save(paths.PREDICTIONS)
    write_json(paths.EVAL_METRICS, {"test": results["test"]})  # the headline; per class in the CSV
    timing.lap("save outputs")
    test_results = results["test"]
    log.info("test accuracy %.4f (%d errors)", test_results["accuracy"], test_results["errors"])


if __name__ == "__main__":
    run_stage(main, tensorflow=True)  # LiteRT's runtime greets on stderr too
