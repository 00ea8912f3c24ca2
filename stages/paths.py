"""Every path a stage reads or writes, relative to the repository root (where dvc runs the stages).

dvc.yaml declares the same paths; keep the two in step.
"""

from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"
PREPARED = DATA / "prepared"
METRICS = Path("metrics")

DATA_METRICS = METRICS / "data.json"
SPLITS = ("train", "val", "test")


def raw_npz(dataset: str) -> Path:
    return RAW / f"{dataset}.npz"


def provenance(dataset: str) -> Path:
    return RAW / f"{dataset}.provenance.json"


def prepared_split(split: str, root: Path = PREPARED) -> Path:
    return root / f"{split}.npz"


def prepared_meta(root: Path = PREPARED) -> Path:
    return root / "meta.json"
