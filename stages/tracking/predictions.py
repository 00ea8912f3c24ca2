"""A model version's test predictions, as the paired test needs them (stages/evaluation/paired.py): those
the report logged in its run, or, for a version whose run has none (registered before evaluate wrote
them), computed now by the version's own logged model on this workspace's test split."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import paths
from stages.core.errors import StageError
from stages.core.io import load_json
from stages.data.npz import load_npz
from stages.evaluation.paired import Predictions, content_digest

log = logging.getLogger(__name__)

ARTIFACT = f"evaluation/{paths.PREDICTIONS.name}"  # where report logs evaluate's file in the run


@dataclass(frozen=True)
class Found:
    predictions: Predictions
    computed: bool  # True: none were stored, the logged model made them now

    def how(self, name: str) -> str:
        """A sentence for the user where the predictions were not stored, else ''."""
        if not self.computed:
            return ""
        return (
            f"{name} has no test predictions in its run (none are kept before this version of evaluate): "
            f"computed them with its logged model on {self.predictions.split} "
            f"({self.predictions.split_sha256[:12]}...)"
        )


def stored(run_id: str) -> Predictions | None:
    """The predictions logged in the run, or None where it has none. A store that cannot list or send the
    run's artifacts stops here, naming it: falling back to totals, or to a model, would hide it."""
    import mlflow

    from stages.tracking import store

    client = mlflow.MlflowClient()
    where = f"the artifacts of MLflow run {run_id} in {store.redact(store.tracking_uri())}"
    try:
        listed = {f.path for f in client.list_artifacts(run_id, Path(ARTIFACT).parent.as_posix())}
        if ARTIFACT not in listed:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(client.download_artifacts(run_id, ARTIFACT, tmp))
            return Predictions.load(local, produced_by="evaluate")
    except StageError as exc:  # a damaged file: the path named is a temporary one
        raise StageError(f"{ARTIFACT} in MLflow run {run_id} is unreadable: rerun its `dvc repro`") from exc
    except _artifact_errors() as exc:
        raise StageError(
            f"cannot read {where} ({type(exc).__name__}: {str(exc)[:200]}): check the store's artifact "
            "access (for S3, the credentials) and rerun"
        ) from exc


def _artifact_errors() -> tuple[type[BaseException], ...]:
    """What reading a run's artifacts raises when the store cannot serve them: MLflow's errors, the file
    system's and requests' (OSErrors), and boto's for S3, whose classes are not OSErrors."""
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [MlflowException, OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # S3 is the [team] extra's
        return tuple(errors)
    return (*errors, BotoCoreError, ClientError)


def of_version(version: Any) -> Found:
    """The predictions of a registered model version (an `mlflow.entities.model_registry.ModelVersion`)."""
    found = stored(version.run_id)
    if found is not None:
        return Found(found, computed=False)
    try:
        return Found(computed_now(version.source), computed=True)
    except _artifact_errors() as exc:
        raise StageError(
            f"version {version.version} has no test predictions in its run, and its logged model "
            f"{version.source} could not be loaded to make them ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc


def computed_now(model_uri: str) -> Predictions:
    """The logged model's predictions on data/prepared/test.npz, through the same MLflow model that serves
    it: the raw 0-255 pixels in, every class's probability out."""
    import mlflow.pyfunc

    from stages.serving.pyfunc import no_type_hint_warning

    meta = load_json(paths.prepared_meta(), produced_by="preprocess")
    test = load_npz(paths.prepared_split("test"), ("x", "label"), produced_by="preprocess")
    pixels = np.rint(test["x"].reshape(len(test["x"]), 28, 28) * 255).astype(np.uint8)
    with no_type_hint_warning():
        model = mlflow.pyfunc.load_model(model_uri)
    answers = model.predict(pixels)
    probabilities = np.asarray(answers["probabilities"].tolist(), dtype=np.float64)
    log.info("computed %d test predictions with %s", len(pixels), model_uri)
    split = content_digest(test["x"], test["label"])
    return Predictions.from_probabilities(probabilities, test["label"], f"{meta['dataset']}/test", split)
