"""Every path a stage reads or writes, relative to the repository root (where dvc runs the stages).

dvc.yaml declares the same paths; keep the two in step.
"""

from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"
PREPARED = DATA / "prepared"
METRICS = Path("metrics")

PARAMS_CHECKED = DATA / "params.checked"  # written by check_params, constant
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


TRAIN_STATE = DATA / "train_state"  # checkpoints of an unfinished training run; not a DVC output
MODEL_DIR = DATA / "model"
TRAIN_METRICS = METRICS / "train.json"
TRAIN_HISTORY = METRICS / "train_history.csv"
EVAL_METRICS = METRICS / "eval.json"
PER_CLASS = METRICS / "per_class.csv"
CONFUSION_CSV = METRICS / "confusion.csv"
CONFUSION_PNG = METRICS / "confusion.png"
MISCLASSIFIED_PNG = METRICS / "misclassified.png"


def model_file(root: Path = MODEL_DIR) -> Path:
    return root / "model.keras"


def model_config(root: Path = MODEL_DIR) -> Path:
    """JSON with the effective settings the model was trained with (preset, optimizer, seed, data...)."""
    return root / "config.json"


def run_record(root: Path = MODEL_DIR) -> Path:
    """JSON with the MLflow run id that train created, for evaluate and report to log into."""
    return root / "run.json"


REPORT_MD = METRICS / "report.md"  # git-tracked; links the PNGs beside it
TRAIN_CURVES_PNG = METRICS / "train_curves.png"
REPORT_DIR = DATA / "report"
REPORT_HTML = REPORT_DIR / "report.html"  # self-contained: images embedded
