"""preprocess: raw uint8 arrays -> train / val / test splits ready for any model.

Images become float32 N x 28 x 28 x 1 in [0, 1] (MLP presets flatten inside the model, so this stage
does not depend on the model); labels become one-hot float32 with 10 classes, with the class index kept
beside them. The validation split is stratified and seeded, held out of the training data; the test set
is the dataset's own, untouched. All three files land in data/prepared/ in one atomic rename.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.model_selection import train_test_split

from stages import paths, timing
from stages.config import PreprocessConfig, load_params
from stages.datasets import ARRAY_NAMES, DATASETS, SourceError, verify
from stages.errors import ConfigError, StageError, run_stage
from stages.io import atomic_path, load_npz, save_npz, write_json

log = logging.getLogger(__name__)

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


def main() -> None:
    params = load_params()
    spec = DATASETS[params.data.dataset]
    raw = load_npz(paths.raw_npz(spec.name), ARRAY_NAMES, produced_by="download")
    try:
        verify(spec, raw)
    except SourceError as exc:
        raise StageError(
            f"{paths.raw_npz(spec.name)} is not genuine ({exc}): rerun `dvc repro download`"
        ) from exc
    timing.lap("load data")
    train_idx, val_idx = split_indices(raw["y_train"], params.preprocess, params.seed)
    splits = {
        "train": (raw["x_train"][train_idx], raw["y_train"][train_idx]),
        "val": (raw["x_train"][val_idx], raw["y_train"][val_idx]),
        "test": (raw["x_test"], raw["y_test"]),
    }
    summary = {
        split: {"images": len(labels), "per_class": class_counts(labels, spec.class_names)}
        for split, (_, labels) in splits.items()
    }
    timing.lap("compute")
    with atomic_path(paths.PREPARED, directory=True) as staging:  # scaling and one-hot happen as it saves
        for split, (images, labels) in splits.items():
            save_npz(paths.prepared_split(split, staging), to_model_inputs(images, labels))
        write_json(
            paths.prepared_meta(staging),
            {
                "dataset": spec.name,
                "content_sha256": spec.content_sha256,
                "class_names": list(spec.class_names),
                "seed": params.seed,
                **params.preprocess.model_dump(),
                "splits": {split: s["images"] for split, s in summary.items()},
            },
        )
    write_json(paths.DATA_METRICS, summary)
    timing.lap("save outputs")
    log.info("prepared %s", ", ".join(f"{split}: {s['images']}" for split, s in summary.items()))


if __name__ == "__main__":
    run_stage(main)
