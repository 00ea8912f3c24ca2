"""The test figures: loss, accuracy, errors, macro F1 and the per-class table, from scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, log_loss


def evaluate(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Test loss and accuracy, and per-class precision, recall, F1 and support."""
    predicted = probabilities.argmax(axis=1)
    errors = int((predicted != labels).sum())
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
            "errors": errors,
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


def most_confident_mistakes(probabilities: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to `count` wrongly classified images, the most confidently wrong first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:count]
