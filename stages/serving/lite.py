"""The trained model as LiteRT runs it: what mnist-predict, the served model and evaluate answer with, so
none of them imports TensorFlow or Keras (the LiteRT runtime imports in a tenth of a second; TensorFlow
takes seconds).

The package stage writes `model.tflite` beside train's `model.keras` (the source of truth) and refuses it
unless the two give the same answers on the whole test set: every probability within `TOLERANCE`, and the
same class wherever the Keras model's two likeliest classes are further apart than that.
docs/serving.md says why LiteRT rather than ONNX.

Like stages/serving/digits.py, this module imports nothing of this project: it is pickled by value into
each logged model.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np

TOLERANCE = 1e-5  # the largest difference from the Keras model's probabilities that package accepts
BATCH = 1000  # images per call into the interpreter for large inputs: larger batches gain nothing


def digest_file(model: Path | str) -> Path:
    """The SHA-256 package records beside the model, in `sha256sum` form: a flatbuffer carries no checksum
    of its own, so a damaged `.tflite` could otherwise load and answer wrongly."""
    model = Path(model)
    return model.with_name(model.name + ".sha256")


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def record_digest(model: Path | str) -> None:
    """Write the digest beside the model, atomically (a temporary name, then renamed)."""
    model = Path(model)
    record = digest_file(model)
    staging = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    staging.write_text(f"{_sha256(model)}  {model.name}\n")
    staging.replace(record)


def verify_digest(model: Path) -> None:
    """Raise ValueError when the model's bytes are not those recorded beside it (no record: nothing to check,
    as in a logged MLflow model, whose artifacts MLflow checks)."""
    record = digest_file(model)
    if record.exists() and record.read_text().split()[:1] != [_sha256(model)]:
        raise ValueError(f"its SHA-256 is not the one recorded in {record.name} when it was written")


class LiteModel:
    """A `.tflite` classifier of N x 28 x 28 (x 1) float images into N x classes probabilities.

    One interpreter, resized to each call's batch; calls from several threads (a scoring server's) take
    turns, since an interpreter holds its tensors between calls."""

    def __init__(self, path: Path | str, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        verify_digest(self.path)
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._shape: tuple[int, ...] | None = None
        self._lock = threading.Lock()

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[..., None]
        if not len(images):
            return np.zeros((0, self._interpreter.get_output_details()[0]["shape"][-1]), np.float32)
        return np.concatenate([self._run(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            if batch.shape != self._shape:
                self._interpreter.resize_tensor_input(self._input, batch.shape)
                self._interpreter.allocate_tensors()
                self._shape = batch.shape
            self._interpreter.set_tensor(self._input, np.ascontiguousarray(batch))
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output).copy()


def differences(expected: np.ndarray, lite: np.ndarray) -> str | None:
    """Why the LiteRT answers are not the Keras model's, or None when they agree: every probability within
    TOLERANCE, and the same class for every image except near-ties, where the Keras model's probability of
    the class LiteRT picked is within TOLERANCE of its own top one (float rounding may then pick either)."""
    if expected.shape != lite.shape:
        return f"the LiteRT model answers in shape {lite.shape}, the Keras model in {expected.shape}"
    if not expected.size:
        return None
    largest = float(np.abs(expected - lite).max())
    rows = np.arange(len(expected))
    expected_class, lite_class = expected.argmax(axis=1), lite.argmax(axis=1)
    margin = expected[rows, expected_class] - expected[rows, lite_class]  # 0 where the classes agree
    disagreeing = int((expected_class != lite_class).sum())
    real = int((margin > TOLERANCE).sum())
    if real or largest > TOLERANCE:
        return (
            f"{real} of {len(expected)} classes differ beyond a near-tie ({disagreeing} differ in all) and "
            f"the largest probability difference is {largest:.2e} (at most {TOLERANCE:g} is accepted)"
        )
    return None
