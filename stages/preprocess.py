"""preprocess: raw uint8 arrays -> data/prepared/{train,val,test}.npz and meta.json, in one atomic rename.

The test set is the dataset's own, untouched; how the splits are made is stages/data/splits.py.
"""

from __future__ import annotations

import logging

from stages.core import paths, timing
from stages.core.config import load_params
from stages.core.errors import SourceError, StageError
from stages.core.io import atomic_path, file_digest, write_json
from stages.core.runner import run_stage
from stages.data.catalogue import ARRAY_NAMES, DATASETS
from stages.data.decoders import verify
from stages.data.npz import load_npz, save_npz
from stages.data.splits import class_counts, split_indices, to_model_inputs

log = logging.getLogger(__name__)


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
        files_md5 = {split: file_digest(paths.prepared_split(split, staging), "md5") for split in splits}
        write_json(
            paths.prepared_meta(staging),
            {
                "dataset": spec.name,
                "content_sha256": spec.content_sha256,
                "class_names": list(spec.class_names),
                "seed": params.seed,
                **params.preprocess.model_dump(),
                "splits": {split: s["images"] for split, s in summary.items()},
                "files_md5": files_md5,  # the MLflow datasets' digests: what DVC's cache names them by
            },
        )
    write_json(paths.DATA_METRICS, summary)
    timing.lap("save outputs")
    log.info("prepared %s", ", ".join(f"{split}: {s['images']}" for split, s in summary.items()))


if __name__ == "__main__":
    run_stage(main)
