"""Raw uint8 arrays -> the splits every model preset trains on.

Images become float32 N x 28 x 28 x 1 in [0, 1] (the MLP presets flatten inside the model, so the splits
do not depend on the model); labels become one-hot float32 with 10 classes, with the class index kept
beside them. The validation split is stratified and seeded, held out of the training data.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from stages.core.config import PreprocessConfig
from stages.core.errors import ConfigError

NUM_CLASSES = 10


def split_indices(labels: np.ndarray, cfg: PreprocessConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train, val) indices into the training set, each in the original order."""
    n = len(labels)
    n_val = int(cfg.val_size) if cfg.val_size >= 1 else round(cfg.val_size * n)
    if n_val and not NUM_CLASSES <= n_val <= n - NUM_CLASSES:
        raise ConfigError(
            f"preprocess.val_size gives {n_val} validation images: use 0 or between {NUM_CLASSES} "
            f"(one per class) and {n - NUM_CLASSES}"
        )
    everything = np.arange(n)
    if n_val:
        train, val = train_test_split(everything, test_size=n_val, stratify=labels, random_state=seed)
    else:
        train, val = everything, everything[:0]
    if cfg.limit is not None and cfg.limit < len(train):
        train, _ = train_test_split(train, train_size=cfg.limit, stratify=labels[train], random_state=seed)
    return np.sort(train), np.sort(val)


def to_model_inputs(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 images and class indices -> the arrays every model preset trains on."""
    return {
        "x": (images.astype(np.float32) / 255.0)[..., np.newaxis],
        "y": np.eye(NUM_CLASSES, dtype=np.float32)[labels],
        "label": labels.astype(np.uint8),
    }


def class_counts(labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    return {name: int(count) for name, count in zip(class_names, counts, strict=True)}
