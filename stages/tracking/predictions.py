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
from stages.core.io import load_json
from stages.data.npz import load_npz
from stages.evaluation.paired import Predictions

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
            f"{name} has no stored test predictions (registered before evaluate kept them): computed them "
            f"with its logged model on {self.predictions.split} (md5 {self.predictions.split_md5[:12]}...)"
        )


def stored(run_id: str) -> Predictions | None:
    """The predictions logged in the run, or None where it has none."""
    import mlflow

    client = mlflow.MlflowClient()
    if ARTIFACT not in {f.path for f in client.list_artifacts(run_id, Path(ARTIFACT).parent.as_posix())}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, ARTIFACT, tmp)
        return Predictions.load(Path(local), produced_by="evaluate")


def of_version(version: Any) -> Found:
    """The predictions of a registered model version (an `mlflow.entities.model_registry.ModelVersion`)."""
    found = stored(version.run_id)
    if found is not None:
        return Found(found, computed=False)
    return Found(computed_now(version.source), computed=True)


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
    return Predictions.from_probabilities(
        probabilities, test["label"], f"{meta['dataset']}/test", meta["files_md5"]["test"]
    )
