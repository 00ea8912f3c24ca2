"""The trained model as an MLflow 3 logged model, in its training run: what the registry versions, what
`mlflow models serve` serves and what mnist-promote compares. The package stage logs it."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

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


def log_model(run_id: str, model_file: Path, example: np.ndarray, class_names: list[str]) -> str:
    """Log the run's MLflow 3 logged model `model`, once: the LiteRT file behind `DigitClassifier`, which
    takes every input layout and request format the input rule allows; its output signature; an input
    example; and the Keras file, the same model for anyone who wants to train on or inspect it. Returns the
    model's URI.

    The class is pickled by value with the input rule (stages/serving/, which imports nothing else of this
    project), so the model is served without this project installed. The signature declares no input
    schema on purpose: MLflow would enforce one layout and refuse the others; our rule checks each input.
    """
    import cloudpickle
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    from stages.serving import digits, lite, pyfunc

    columns = [
        ColSpec(Array(DataType.double) if kind == "array" else kind, name, required=required)
        for name, kind, required in OUTPUT_SCHEMA
    ]
    from stages.tracking import registry

    if (logged := registry.logged_model(run_id)) is not None:  # an earlier attempt got through
        return logged.model_uri
    lite_file = paths.lite_file(model_file.parent)  # package writes it beside train's model.keras
    requirements = [f"{name}=={importlib.metadata.version(name)}" for name in SERVING_REQUIREMENTS]
    for module in (digits, lite, pyfunc):
        cloudpickle.register_pickle_by_value(module)
    try:
        with pyfunc.no_type_hint_warning(), mlflow.start_run(run_id=run_id):  # reopened, then FINISHED again
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=pyfunc.DigitClassifier(),
                artifacts={"litert_model": str(lite_file), "keras_model": str(model_file)},
                model_config={"class_names": class_names},
                signature=ModelSignature(outputs=Schema(columns)),
                input_example=example,
                pip_requirements=requirements,
            )
    finally:
        for module in (digits, lite, pyfunc):
            cloudpickle.unregister_pickle_by_value(module)
    return info.model_uri
