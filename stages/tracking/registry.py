"""The model registry: one version per logged model of a training run (one, unless its serving code
changed), whatever name it is registered under, pointing at the run's MLflow 3 logged model."""

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
    """Register the run's newest logged model under `name`, once: a rerun (or a renamed
    `train.registered_model`, which the report stage applies) adds no duplicate; a model logged again for
    new serving code gets a version of its own. Returns the version."""
    import mlflow

    client = mlflow.MlflowClient()
    model = logged_model(run_id)
    if model is None:
        raise StageError(
            f"the MLflow run {run_id} has no logged model to register; rerun `dvc repro --force package`"
        )
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    same = [v for v in existing if v.source == model.model_uri]  # (search results carry no model_id)
    if same:
        return max(same, key=lambda v: int(v.version)).version
    with store.no_http_retries():  # a create call: a lost answer is found by the lookup above next time
        version = mlflow.register_model(model.model_uri, name, tags={"run_id": run_id})
    log.info("registered %s version %s", name, version.version)
    return version.version
