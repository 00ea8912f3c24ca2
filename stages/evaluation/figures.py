"""evaluate's figures: the confusion matrix (rows for DVC's `confusion` template, and a PNG) and the grid
of the most confident mistakes; the report draws its images of fixes and breaks with the same grid.

Drawn on matplotlib `Figure` objects rather than through pyplot, so no GUI backend is ever chosen and
nothing needs setting up at import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

from stages.core import paths
from stages.core.io import atomic_path
from stages.evaluation.metrics import most_confident_mistakes


def save_confusion(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> None:
    """The confusion matrix as one row per test image (DVC's `confusion` template) and as a PNG."""
    rows = pd.DataFrame(
        {"actual": np.asarray(class_names)[labels], "predicted": np.asarray(class_names)[predicted]}
    )
    with atomic_path(paths.CONFUSION_CSV) as tmp:
        rows.to_csv(tmp, index=False)
    matrix = confusion_matrix(labels, predicted, labels=range(len(class_names)))
    fig = Figure(figsize=(7.5, 6.5), dpi=100)
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(matrix, display_labels=class_names).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set_title(f"Test confusion matrix ({int(np.trace(matrix))} of {int(matrix.sum())} right)")
    for label in ax.get_xticklabels():
        label.set(rotation=45, ha="right")
    fig.tight_layout()
    _save_png(fig, paths.CONFUSION_PNG)


def save_misclassified(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names: list[str], count: int
) -> None:
    """A grid of the most confident mistakes: true label, predicted label and confidence above each."""
    predicted = probabilities.argmax(axis=1)
    wrong = most_confident_mistakes(probabilities, labels, count)
    captions = [
        f"#{i}: {class_names[labels[i]]} → {class_names[predicted[i]]}\n{probabilities[i, predicted[i]]:.0%}"
        for i in wrong
    ]
    title = f"Most confident mistakes ({len(wrong)} of {int((predicted != labels).sum())})"
    save_image_grid(images, wrong, captions, title, paths.MISCLASSIFIED_PNG)


def save_image_grid(
    images: np.ndarray, indices: np.ndarray, captions: list[str], title: str, dest: Path
) -> None:
    """Test images in a grid of up to six columns, a two-line caption above each.

    One mosaic image on one Axes: an Axes per image, with ticks and layout, costs several times as much
    (docs/performance.md).
    """
    columns = max(1, min(6, len(indices)))
    rows = max(1, int(np.ceil(len(indices) / columns)))
    height, width = images.shape[1:3]
    cell_w, cell_h, title_h = width + 6, height + 12, 12  # in image pixels; 12 rows of space for two lines
    mosaic = np.zeros((rows * cell_h + 3, columns * cell_w), dtype=np.float32)  # 0 is white in gray_r
    scale = 1.9 / cell_w  # inches per image pixel: a 1.9-inch cell, as wide as before
    top = 0.35  # inches for the figure title
    fig = Figure(figsize=(mosaic.shape[1] * scale, mosaic.shape[0] * scale + top), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - top / fig.get_figheight()))
    for slot, (index, caption) in enumerate(zip(indices, captions, strict=True)):
        row, column = divmod(slot, columns)
        y, x = row * cell_h + title_h, column * cell_w + 3
        mosaic[y : y + height, x : x + width] = images[index].reshape(height, width)
        ax.text(x + width / 2, y - 1, caption, ha="center", va="bottom", fontsize=8)
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(title, fontsize=10)
    _save_png(fig, dest)


def _save_png(fig: Figure, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
