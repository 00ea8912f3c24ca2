"""evaluate: the trained model on the test split, the only stage that reads it.

Writes metrics/eval.json (the DVC metric), the per-class table, the confusion matrix (as rows for DVC's
`confusion` template and as a PNG) and a grid of the most confident mistakes, and logs them all into the
MLflow run that train created.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
)

from stages import paths, timing, tracking
from stages.config import load_params
from stages.errors import run_stage
from stages.io import atomic_path, load_json, load_model, load_npz, write_json

log = logging.getLogger(__name__)

PER_CLASS_TABLE = "evaluation/per_class.json"


def evaluate(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Test loss and accuracy, and per-class precision, recall, F1 and support."""
    predicted = probabilities.argmax(axis=1)
    report = classification_report(
        labels,
        predicted,
        labels=range(len(class_names)),
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    return {
        "test": {
            "loss": float(log_loss(labels, probabilities, labels=range(len(class_names)))),
            "accuracy": float(accuracy_score(labels, predicted)),
            "errors": int((predicted != labels).sum()),
            "macro_f1": float(report["macro avg"]["f1-score"]),
        },
        "per_class": {
            name: {
                "precision": float(report[name]["precision"]),
                "recall": float(report[name]["recall"]),
                "f1": float(report[name]["f1-score"]),
                "support": int(report[name]["support"]),
            }
            for name in class_names
        },
    }


def save_confusion(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> None:
    """The confusion matrix as one row per test image (DVC's `confusion` template) and as a PNG."""
    rows = pd.DataFrame(
        {"actual": np.asarray(class_names)[labels], "predicted": np.asarray(class_names)[predicted]}
    )
    with atomic_path(paths.CONFUSION_CSV) as tmp:
        rows.to_csv(tmp, index=False)
    matrix = confusion_matrix(labels, predicted, labels=range(len(class_names)))
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=100)
    ConfusionMatrixDisplay(matrix, display_labels=class_names).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set_title(f"Test confusion matrix ({int(np.trace(matrix))} of {int(matrix.sum())} right)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    _save_png(fig, paths.CONFUSION_PNG)


def most_confident_mistakes(probabilities: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to `count` wrongly classified images, the most confidently wrong first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:count]


def save_misclassified(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names: list[str], count: int
) -> None:
    """A grid of the most confident mistakes: true label, predicted label and confidence above each.

    One mosaic image on one Axes: 36 Axes (with their ticks and tight_layout) took 0.5 s of the stage.
    """
    predicted = probabilities.argmax(axis=1)
    wrong = most_confident_mistakes(probabilities, labels, count)
    columns = max(1, min(6, len(wrong)))
    rows = max(1, int(np.ceil(len(wrong) / columns)))
    height, width = images.shape[1:3]
    cell_w, cell_h, title_h = width + 6, height + 12, 12  # in image pixels; 12 rows of space for two lines
    mosaic = np.zeros((rows * cell_h + 3, columns * cell_w), dtype=np.float32)  # 0 is white in gray_r
    scale = 1.9 / cell_w  # inches per image pixel: a 1.9-inch cell, as wide as before
    top = 0.35  # inches for the figure title
    fig = plt.figure(figsize=(mosaic.shape[1] * scale, mosaic.shape[0] * scale + top), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - top / fig.get_figheight()))
    for slot, index in enumerate(wrong):
        row, column = divmod(slot, columns)
        y, x = row * cell_h + title_h, column * cell_w + 3
        mosaic[y : y + height, x : x + width] = images[index, :, :, 0]
        caption = f"#{index}: {class_names[labels[index]]} → {class_names[predicted[index]]}"
        confidence = probabilities[index, predicted[index]]
        ax.text(x + width / 2, y - 1, f"{caption}\n{confidence:.0%}", ha="center", va="bottom", fontsize=8)
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(f"Most confident mistakes ({len(wrong)} of {int((predicted != labels).sum())})", fontsize=10)
    _save_png(fig, paths.MISCLASSIFIED_PNG)


def _save_png(fig: plt.Figure, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


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
    tracking.connect()  # fails in seconds if the store is unusable
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
