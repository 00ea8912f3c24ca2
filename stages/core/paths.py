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


def raw_npz(dataset: str) -> Path:
    return RAW / f"{dataset}.npz"


def provenance(dataset: str) -> Path:
    return RAW / f"{dataset}.provenance.json"


def prepared_split(split: str, root: Path = PREPARED) -> Path:
    return root / f"{split}.npz"


def prepared_meta(root: Path = PREPARED) -> Path:
    return root / "meta.json"


TRAIN_STATE = DATA / "train_state"  # checkpoints of an unfinished training run; not a DVC output
TEMPORARY_COPY = "DVC deletes this experiment's temporary copy, checkpoints included, when it ends"


def checkpoints_outlive_the_run() -> bool:
    """False inside `dvc exp run --temp` or a queued experiment (a copy under .dvc/tmp/exps), which DVC
    deletes when it ends: there, no rerun can resume from the checkpoints."""
    parts = Path.cwd().resolve().parts
    return not any(parts[i : i + 3] == (".dvc", "tmp", "exps") for i in range(len(parts)))


MODEL_DIR = DATA / "model"
TRAIN_METRICS = METRICS / "train.json"
# What the run's logged model serves (a digest of the model files and the serving code), from package: an
# uncached output (in git, so a clone has it), so DVC never restores package from its run cache, which would
# skip the logging package does.
SERVED_RECORD = METRICS / "served.json"
VAL_METRICS = (
    METRICS / "val.json"
)  # train's final validation figures: a DVC metric, what a trial is scored by
TRAIN_HISTORY = METRICS / "train_history.csv"
EVAL_METRICS = METRICS / "eval.json"
PER_CLASS = METRICS / "per_class.csv"
CONFUSION_CSV = METRICS / "confusion.csv"
CONFUSION_PNG = METRICS / "confusion.png"
MISCLASSIFIED_PNG = METRICS / "misclassified.png"
# Each test image's predicted class and probability, for paired comparisons (stages/evaluation/paired.py).
# In git (uncached, 60 KB) like the figures beside it, so that a fresh clone has it and skips evaluate.
PREDICTIONS = METRICS / "predictions.npz"


def model_file(root: Path = MODEL_DIR) -> Path:
    return root / "model.keras"


def lite_file(root: Path = MODEL_DIR) -> Path:
    """The same model for LiteRT, from package: what mnist-predict, the served model and evaluate run."""
    return root / "model.tflite"


def model_config(root: Path = MODEL_DIR) -> Path:
    """JSON with the effective settings the model was trained with (preset, optimizer, seed, data...)."""
    return root / "config.json"


# The MLflow run that train created and the sha256 of the model it saved, for report and mnist-promote.
# Not a DVC output (a run id differs on every run, and dvc.lock must not), so readers check the hash.
RUN_RECORD = DATA / "train_run.json"
# Wall times of the last training: a DVC metric but no stage's output (not in dvc.lock), and git-ignored, so
# that no run leaves a tracked file modified.
TIMING_METRICS = METRICS / "timing.json"
# What trained the workspace's model (backend, devices, CPU instruction sets), which its bytes depend on,
# written by every training; git-ignored like the model.
MACHINE_RECORD = DATA / "machine.json"
# The same record for the committed dvc.lock: copied from MACHINE_RECORD by whoever commits a lock from a
# real run (CONTRIBUTING.md, the retraining workflow), never by a run, so a fresh clone knows whether it
# can expect the committed bytes and its `dvc repro` leaves `git status` empty.
COMMITTED_MACHINE = METRICS / "machine.json"


REPORT_DIR = DATA / "report"
REPORT_HTML = REPORT_DIR / "report.html"  # self-contained: images embedded
REPORT_MD = REPORT_DIR / "report.md"  # fit to post as a CI comment; links the PNGs
TRAIN_CURVES_PNG = REPORT_DIR / "train_curves.png"
FIXED_PNG = REPORT_DIR / "fixed.png"  # test images this model gets right and the champion wrong
BROKEN_PNG = REPORT_DIR / "broken.png"  # and the other way round
# The report's headline figures, the same for the same inputs: its DVC output (the pages above name the
# MLflow run, so they are none), which a fresh clone lacks, so its first `dvc repro` completes its run.
REPORT_SUMMARY = REPORT_DIR / "summary.json"
