"""The MLflow model that serves the trained model: every input layout and request format the input rule
allows (tensors, `dataframe_split`, `dataframe_records`, CSV), answered as `digits.answers` does, by the
LiteRT form of the model (stages/serving/lite.py): serving imports neither TensorFlow nor Keras.

Pickled by value with stages/serving/digits.py and lite.py into each logged model (see digits.py).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from stages.serving.digits import InputError, answers, to_model_input
from stages.serving.lite import LiteModel

TYPE_HINT_WARNING = "Add type hints to the `predict` method"


@contextlib.contextmanager
def no_type_hint_warning() -> Iterator[None]:
    """Drop the warning MLflow gives whenever a PythonModel class is created (defined, or unpickled by
    `load_model`) whose predict() has no type hints. Hints would make MLflow enforce one input layout and
    refuse the others; and MLflow shows the warning under a filter of its own, which no caller's filter
    overrides, so it is dropped where it would be shown."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if TYPE_HINT_WARNING not in str(message):
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


class RequestError(MlflowException):
    """A refused request, answered 400 with our one line. MLflow's scoring server prefixes the message of
    an exception from predict() with the whole request ("Failed to predict data '...'"); this class keeps
    its message as written, so a request is never echoed back."""

    def __init__(self, text: str) -> None:
        self._text = text
        super().__init__(text, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._text

    @message.setter
    def message(self, value: str) -> None:  # the server's prefixed copy is dropped
        pass


with no_type_hint_warning():

    class DigitClassifier(mlflow.pyfunc.PythonModel):
        """The trained model in LiteRT form (the `litert_model` artifact; the `keras_model` artifact is the
        same model for Keras) and its class names (model config)."""

        def load_context(self, context) -> None:  # no hints: MLflow would read them as a schema
            self.model = LiteModel(context.artifacts["litert_model"])
            self.class_names = list(context.model_config["class_names"])

        def predict(self, context, model_input, params=None) -> pd.DataFrame:
            try:
                images = to_model_input(model_input, whole_numbers=True)
            except InputError as exc:
                raise RequestError(str(exc)) from None
            return answers(self.model.probabilities(images), self.class_names, images)
