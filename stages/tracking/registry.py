"""The model registry: one version per training run, whatever name it is registered under, pointing at
the run's MLflow 3 logged model."""

from __future__ import annotations

import logging
from typing import Any

from stages.core.errors import StageError
from stages.tracking import store

log = logging.getLogger(__name__)


def logged_model(run_id: str) -> Any | None:
    """The logged model `model` that the run created (an `mlflow.entities.LoggedModel`), or None."""
    import mlflow
    from mlflow.entities import LoggedModelStatus

    run = mlflow.MlflowClient().get_run(run_id)
    found = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = 'model'",
        output_format="list",
    )
    ready = [m for m in found if m.status == LoggedModelStatus.READY]  # not one a killed log left behind
    return max(ready, key=lambda m: m.creation_timestamp) if ready else None


def register(run_id: str, name: str) -> str:
    """Register the run's logged model under `name`, once: a rerun (or a renamed `train.registered_model`,
    which the report stage applies) adds no duplicate. Returns the version."""
    import mlflow

    client = mlflow.MlflowClient()
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        return max(existing, key=lambda v: int(v.version)).version
    model = logged_model(run_id)
    if model is None:
        raise StageError(
            f"the MLflow run {run_id} has no logged model to register; rerun `dvc repro --force train`"
        )
    with store.no_http_retries():  # a create call: a lost answer is found by the lookup above next time
        version = mlflow.register_model(model.model_uri, name, tags={"run_id": run_id})
    log.info("registered %s version %s", name, version.version)
    return version.version
