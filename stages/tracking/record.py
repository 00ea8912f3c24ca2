"""What the report stage records in a training run once the pipeline has finished: the test split as its
`testing` dataset (train reads no test image), the evaluation, linked to the run's logged model and that
dataset, and the report. Safe to repeat: a run may be
completed again (report rerun by hand, or after a failure), and a new run often gets the evaluation of
model bytes that an earlier run already had (DVC skips an evaluate whose inputs did not change)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

PER_CLASS_TABLE = "evaluation/per_class.json"


def evaluation(
    run_id: str,
    test: dict[str, float],
    per_class: pd.DataFrame,
    files: list[Path],
    model_id: str | None,
    dataset: Any,
) -> None:
    """The test figures (linked to the logged model and the test dataset, so MLflow's Models view shows
    them), one figure per class and metric, the evaluation files, and the per-class table."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from stages.tracking import lineage

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    inputs = run.inputs.dataset_inputs
    contexts = {tag.value for i in inputs for tag in i.tags if tag.key == MLFLOW_DATASET_CONTEXT}
    testing = lineage.SPLIT_CONTEXTS["test"]
    if testing not in contexts:  # train reads no test image: the split is recorded here
        tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=testing)]
        client.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset, tags=tags)])
    logged = run.data.metrics
    headline = {f"test_{k}": float(v) for k, v in test.items()}
    if any(logged.get(key) != value for key, value in headline.items()):  # not already recorded
        mlflow.log_metrics(headline, run_id=run_id, model_id=model_id, dataset=dataset)
        mlflow.log_metrics(
            {
                f"test_{metric}_{i}": float(row[metric])
                for i, (_, row) in enumerate(per_class.iterrows())
                for metric in ("precision", "recall", "f1")
            },
            run_id=run_id,
        )
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="evaluation")
    table = per_class.reset_index()
    existing = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    if PER_CLASS_TABLE in existing:  # `log_table` appends to a table that exists: each class twice
        client.log_text(run_id, table.to_json(orient="split", index=False), PER_CLASS_TABLE)
    else:
        client.log_table(run_id, table, artifact_file=PER_CLASS_TABLE)


def report(run_id: str, files: list[Path]) -> None:
    import mlflow

    for path in files:
        mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_path="report")
