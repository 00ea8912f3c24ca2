"""The trained model as an MLflow 3 logged model, in its training run: what the registry versions, what
`mlflow models serve` serves and what mnist-promote compares. The package stage logs it, again whenever
what it serves changes (the model files or the serving code)."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import paths

OUTPUT_SCHEMA = [
    ("class", "long", False),
    ("label", "string", False),
    ("confidence", "double", True),
    ("probabilities", "array", True),
    ("warning", "string", False),
]


# What the served model imports (stages/serving/): no TensorFlow, no Keras.
SERVING_REQUIREMENTS = ("ai-edge-litert", "mlflow", "numpy", "pandas", "pillow")


SERVING_TAG = "mnist.serving_sha256"  # on each logged model: what it serves (see `serving_digest`)


def serving_digest(lite_file: Path, model_file: Path) -> str:
    """What a logged model serves, as one SHA-256: the LiteRT and Keras files, and the code pickled into it
    (stages/serving/digits.py, lite.py, pyfunc.py, and this module, which sets its signature and
    requirements). An edit to any of them makes a new one, so package logs the model again."""
    from stages.serving import digits, lite, pyfunc

    digest = hashlib.sha256()
    for path in (lite_file, model_file, *(Path(m.__file__) for m in (digits, lite, pyfunc)), Path(__file__)):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def current_model(run_id: str, digest: str) -> Any | None:
    """The run's logged model if it serves `digest` (the newest one is what report registers), else None."""
    from stages.tracking import registry

    logged = registry.logged_model(run_id)
    return logged if logged is not None and logged.tags.get(SERVING_TAG) == digest else None


def log_model(run_id: str, model_file: Path, example: np.ndarray, class_names: list[str], digest: str) -> str:
    """Log the run's MLflow 3 logged model `model`, once for each `digest`: the LiteRT file behind
    `DigitClassifier`, which takes every input layout and request format the input rule allows; its output
    signature; an input example; and the Keras file, the same model for anyone who wants to train on or
    inspect it. Returns the model's URI.

    The class is pickled by value with the input rule (stages/serving/digits.py, lite.py, pyfunc.py, which
    import nothing else of this project), so the model is served without this project installed. The
    signature declares no input schema on purpose: MLflow would enforce one layout and refuse the others;
    our rule checks each input.
    """
    import cloudpickle
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    from stages.serving import digits, lite, pyfunc
    from stages.tracking import store

    if (logged := current_model(run_id, digest)) is not None:  # an earlier attempt got through
        return logged.model_uri
    columns = [
        ColSpec(Array(DataType.double) if kind == "array" else kind, name, required=required)
        for name, kind, required in OUTPUT_SCHEMA
    ]
    lite_file = paths.lite_file(model_file.parent)  # package writes it beside train's model.keras
    requirements = [f"{name}=={importlib.metadata.version(name)}" for name in SERVING_REQUIREMENTS]
    for module in (digits, lite, pyfunc):
        cloudpickle.register_pickle_by_value(module)
    try:
        with pyfunc.no_type_hint_warning(), store.reopened(run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=pyfunc.DigitClassifier(),
                artifacts={"litert_model": str(lite_file), "keras_model": str(model_file)},
                model_config={"class_names": class_names},
                signature=ModelSignature(outputs=Schema(columns)),
                input_example=example,
                pip_requirements=requirements,
                tags={SERVING_TAG: digest},
            )
    finally:
        for module in (digits, lite, pyfunc):
            cloudpickle.unregister_pickle_by_value(module)
    return info.model_uri
