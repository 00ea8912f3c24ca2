"""Runs read back from MLflow as pandas tables: the report's comparison, `mnist-runs` and `mnist-promote`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stages.core.io import load_json
from stages.tracking import store
from stages.tracking.store import EXPERIMENT

# Columns of mlflow.search_runs' frame -> the comparison table's headings.
SUMMARY_COLUMNS = {
    "tags.preset": "preset",
    "params.data.dataset": "dataset",
    "params.model.params.total": "params",
    "params.model.params.trainable": "trainable",
    "metrics.final_epochs": "epochs",
    "metrics.final_val_accuracy": "val acc",
    "metrics.test_accuracy": "test acc (95% CI)",
    "metrics.final_train_time_s": "train s",
    "tags.git.commit": "commit",
}
# Params that say nothing about what was trained (or are already in the summary columns).
_NOT_COMPARED_PREFIXES = (
    "params.effective.",
    "params.model.params.",
    "params.data.",
    "params.promote.",
    "params.report.",
)
_NOT_COMPARED = {"params.train.model", "params.evaluate.misclassified_examples"}


def search(experiment: str = EXPERIMENT, limit: int = 10, run_ids: list[str] | None = None) -> pd.DataFrame:
    """The newest finished runs of the experiment (or the given runs), newest first; empty if none."""
    import mlflow

    filters = ["attributes.status = 'FINISHED'", "tags.preset LIKE '%'"]  # trainings, not a study's run
    if run_ids:
        filters.append("attributes.run_id IN (" + ", ".join(f"'{run_id}'" for run_id in run_ids) + ")")
    if limit <= 0 and not run_ids:
        return pd.DataFrame()
    return mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=" AND ".join(filters),
        max_results=max(limit, len(run_ids or [])),
        order_by=["attributes.start_time DESC"],
    )


def differing_params(runs: pd.DataFrame) -> list[str]:
    """The params.yaml keys whose values are not the same in every run (the interesting ones)."""
    columns = []
    for column in runs.columns:
        if (
            not column.startswith("params.")
            or column in _NOT_COMPARED
            or column.startswith(_NOT_COMPARED_PREFIXES)
        ):
            continue
        if runs[column].fillna("").astype(str).nunique() > 1:
            columns.append(column)
    return columns


def comparison(runs: pd.DataFrame, marks: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per run: a short id, when, an optional mark (`this run`, `champion`), the summary columns and
    the params that differ. Missing figures stay empty rather than failing the table."""
    if runs.empty:
        return pd.DataFrame(columns=["run", "started", *SUMMARY_COLUMNS.values()])
    table = pd.DataFrame(
        {
            "run": runs["run_id"].str[:8],
            "started": pd.to_datetime(runs["start_time"]).dt.strftime("%Y-%m-%d %H:%M"),
        }
    )
    if marks:
        table.insert(1, "", runs["run_id"].map(marks).fillna(""))
    for column, heading in SUMMARY_COLUMNS.items():
        table[heading] = runs.get(column)
    for column in differing_params(runs):
        table[column.removeprefix("params.")] = runs[column]
    table["val acc"] = table["val acc"].map(_percent)
    table[
        "test acc (95% CI)"
    ] = [  # with its 95% interval where the run recorded one (runs before it did not)
        "" if pd.isna(accuracy) else format_accuracy(accuracy, low, high)
        for accuracy, low, high in zip(
            runs.get("metrics.test_accuracy", pd.Series(np.nan, index=runs.index)),
            runs.get("metrics.test_accuracy_ci95_low", pd.Series(np.nan, index=runs.index)),
            runs.get("metrics.test_accuracy_ci95_high", pd.Series(np.nan, index=runs.index)),
            strict=True,
        )
    ]
    table["train s"] = table["train s"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    table["epochs"] = table["epochs"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    table["commit"] = table["commit"].fillna("").str[:8]
    return table.fillna("")


def format_accuracy(accuracy: float, low: float | None, high: float | None) -> str:
    """`99.52% (99.37-99.64)`: the accuracy and its 95% interval, or the accuracy alone where the run
    recorded no interval (runs before evaluate did)."""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{accuracy:.2%}"
    return f"{accuracy:.2%} ({100 * low:.2f}-{100 * high:.2f})"


def _percent(value: Any) -> str:
    return "" if value is None or pd.isna(value) else f"{100 * float(value):.2f}%"


def champion_version(model_name: str, alias: str) -> Any | None:
    """The model version (`ModelVersion`) the alias points at, or None where there is none yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        # no such model: RESOURCE_DOES_NOT_EXIST; a model without that alias: INVALID_PARAMETER_VALUE
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


MODEL_TAG = "model.sha256"  # set by train on each run: which model file the run produced


def model_run_id() -> str:
    """The MLflow run of data/model/model.keras. data/train_run.json names it when train ran here; when the
    model came from DVC's cache or remote instead (a second clone after `dvc pull`, a CI runner), its run
    is the newest finished one tagged with the model's sha256, in the store that recorded it."""
    import mlflow

    from stages.core import paths
    from stages.core.errors import StageError
    from stages.core.io import file_digest

    model = paths.model_file()
    if not model.exists():
        raise StageError(f"{model} is missing: rerun `dvc repro train` to rebuild it")
    digest = file_digest(model)
    if paths.RUN_RECORD.exists():
        record = load_json(paths.RUN_RECORD, produced_by="train")
        if record.get("model_sha256") == digest:
            return record["run_id"]
    found = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{MODEL_TAG}` = '{digest}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not found:
        raise StageError(
            f"no MLflow run in {store.redact(store.tracking_uri())} recorded {model} (sha256 "
            f"{digest[:12]}...): it came from DVC's cache or remote, trained against another store. Point "
            "MLFLOW_TRACKING_URI at that store, or run `dvc repro --force train` to train and record it here."
        )
    return found[0].info.run_id
