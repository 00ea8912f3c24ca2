"""evaluate: the trained model on the test split, the only stage that reads it.

Writes metrics/eval.json (the DVC metric), the per-class table, the confusion matrix and a grid of the
most confident mistakes (stages/evaluation/), and logs them all into the MLflow run that train created.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from stages.core import paths, timing
from stages.core.config import load_params
from stages.core.io import atomic_path, load_json, load_model, write_json
from stages.core.runner import run_stage
from stages.data.npz import load_npz
from stages.evaluation.figures import save_confusion, save_misclassified
from stages.evaluation.metrics import evaluate
from stages.tracking import store

log = logging.getLogger(__name__)

PER_CLASS_TABLE = "evaluation/per_class.json"


def _log_per_class_table(table: pd.DataFrame, run_id: str) -> None:
    """The per-class table as an MLflow table (the UI shows it as one), replaced when evaluate reruns for
    the same training run: `log_table` appends to a table that exists, which would list every class twice."""
    import mlflow

    existing = {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    if PER_CLASS_TABLE in existing:  # logged as a table the first time; the same format overwrites it
        mlflow.log_text(table.to_json(orient="split", index=False), PER_CLASS_TABLE)
    else:
        mlflow.log_table(table, artifact_file=PER_CLASS_TABLE)


def main() -> None:
    params = load_params()
    class_names: list[str] = load_json(paths.prepared_meta(), produced_by="preprocess")["class_names"]
    run_id = load_json(paths.run_record(), produced_by="train")["run_id"]
    store.connect()  # fails in seconds if the store is unusable
    timing.lap("mlflow")
    model = load_model(paths.model_file())
    test = load_npz(paths.prepared_split("test"), ("x", "label"), produced_by="preprocess")
    labels = test["label"].astype(np.int64)
    timing.lap("load data")

    probabilities = np.asarray(model.predict(test["x"], batch_size=1000, verbose=0), dtype=np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 +- 1e-7
    results = evaluate(probabilities, labels, class_names)
    predicted = probabilities.argmax(axis=1)
    timing.lap("compute")

    per_class = pd.DataFrame.from_dict(results["per_class"], orient="index").rename_axis("class")
    with atomic_path(paths.PER_CLASS) as tmp:
        per_class.to_csv(tmp, float_format="%.4f")
    save_confusion(labels, predicted, class_names)
    save_misclassified(test["x"], labels, probabilities, class_names, params.evaluate.misclassified_examples)
    write_json(paths.EVAL_METRICS, results)
    timing.lap("save outputs")

    import mlflow

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in results["test"].items()})
        mlflow.log_metrics(
            {f"test_{metric}_{i}": values[metric] for i, values in enumerate(results["per_class"].values())
             for metric in ("precision", "recall", "f1")}
        )  # fmt: skip
        for path in (paths.EVAL_METRICS, paths.PER_CLASS, paths.CONFUSION_PNG, paths.MISCLASSIFIED_PNG):
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        _log_per_class_table(per_class.reset_index(), run_id)
    timing.lap("mlflow")
    test_results = results["test"]
    log.info("test accuracy %.4f (%d errors)", test_results["accuracy"], test_results["errors"])


if __name__ == "__main__":
    run_stage(main)
