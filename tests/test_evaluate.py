"""evaluate's pieces on small hand-made inputs: the metrics against their definitions, the mistakes grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stages.core import paths
from stages.evaluation import figures, metrics

NAMES = [str(digit) for digit in range(10)]


def one_hot_probabilities(predicted: list[int], confidence: list[float]) -> np.ndarray:
    """Rows that put `confidence` on the predicted class and spread the rest evenly."""
    rows = np.empty((len(predicted), 10))
    for row, (cls, p) in enumerate(zip(predicted, confidence, strict=True)):
        rows[row] = (1 - p) / 9
        rows[row, cls] = p
    return rows


def test_metrics_match_their_definitions():
    labels = np.array([0, 1, 2, 3, 3, 3])
    probabilities = one_hot_probabilities([0, 1, 2, 3, 0, 3], [0.9, 0.8, 0.7, 0.6, 0.5, 0.99])
    results = metrics.evaluate(probabilities, labels, NAMES)
    assert results["test"]["errors"] == 1
    assert results["test"]["accuracy"] == pytest.approx(5 / 6)
    expected_loss = -np.mean(np.log(probabilities[np.arange(6), labels]))
    assert results["test"]["loss"] == pytest.approx(expected_loss)
    assert results["per_class"]["3"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert results["per_class"]["0"]["precision"] == 0.5
    assert results["per_class"]["9"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_mistakes_come_most_confident_first_and_at_most_count():
    labels = np.array([1, 1, 1, 1, 1])
    probabilities = one_hot_probabilities([1, 2, 3, 4, 5], [0.9, 0.6, 0.95, 0.6, 0.7])
    assert metrics.most_confident_mistakes(probabilities, labels, 10).tolist() == [2, 4, 1, 3]
    assert metrics.most_confident_mistakes(probabilities, labels, 2).tolist() == [2, 4]
    assert metrics.most_confident_mistakes(probabilities[:1], labels[:1], 5).tolist() == []


@pytest.mark.parametrize(("mistakes", "rows"), [(0, 1), (5, 1), (7, 2), (36, 6)])
def test_the_mistakes_grid_has_a_row_per_six_mistakes(tmp_path, monkeypatch, mistakes, rows):
    monkeypatch.chdir(tmp_path)
    n = 40
    images = np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32)
    labels = np.zeros(n, dtype=np.int64)
    predicted = [1] * mistakes + [0] * (n - mistakes)
    probabilities = one_hot_probabilities(predicted, list(np.linspace(0.99, 0.5, n)))
    figures.save_misclassified(images, labels, probabilities, NAMES, count=36)
    with Image.open(paths.MISCLASSIFIED_PNG) as png:
        width, height = png.size
    assert width == 190 * max(1, min(6, mistakes))  # 1.9-inch cells (34 image pixels) at 100 dpi
    cell_height = 40 * 190 / 34  # an image and its two-line caption
    assert height == pytest.approx(35 + rows * cell_height + 3 * 190 / 34, abs=2)  # title, rows, margin
    assert list(tmp_path.joinpath("metrics").iterdir()) == [tmp_path / paths.MISCLASSIFIED_PNG]
