"""The model registry: one version per training run, whatever name it is registered under."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def register(run_id: str, name: str) -> str:
    """Register the run's logged `model` under `name`, once: a rerun (or a renamed
    `train.registered_model`, which the report stage applies) adds no duplicate. Returns the version."""
    import mlflow

    client = mlflow.MlflowClient()
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        return max(existing, key=lambda v: int(v.version)).version
    version = mlflow.register_model(f"runs:/{run_id}/model", name, tags={"run_id": run_id})
    log.info("registered %s version %s", name, version.version)
    return version.version
