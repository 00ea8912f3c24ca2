"""The trained model in LiteRT form, for serving: what mnist-predict, the served model and evaluate run.

The package stage converts train's `model.keras` and refuses the result unless it answers the test images
as the Keras model does (stages/serving/lite.py says how closely): training itself never converts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from stages.core.errors import StageError
from stages.core.io import atomic_path


def save_lite(model: Any, keras_file: Path, dest: Path, images: Any) -> None:
    """Write the model in LiteRT form (TensorFlow's own converter: the same weights give the same bytes),
    and refuse it unless it answers `images` as the Keras model does (stages/serving/lite.py). Written
    atomically; the caller records its digest (`lite.record_digest`) once it is in place.

    LiteRT runs float32: a mixed-precision model is converted, and compared, as its float32 twin (the same
    weights, which mixed precision keeps in float32 anyway). Keras converts to LiteRT from TensorFlow only,
    so a model trained on another backend is converted from its saved `keras_file`, loaded under
    TensorFlow in a process of its own."""
    import keras
    import numpy as np

    from stages.serving.lite import LiteModel, differences

    model = float32_twin(model)
    dest = Path(dest)
    with atomic_path(dest) as staging:
        # Keras wants a `.tflite` name: a hidden scratch folder, named as `atomic_path` names its temporary
        # files, so the next write clears one a kill left behind (made once atomic_path has cleared them)
        scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            exported = scratch / "model.tflite"
            if keras.backend.backend() == "tensorflow":
                model.export(str(exported), format="litert", verbose=False)
            else:
                _export_under_tensorflow(keras_file, exported)
            expected = np.asarray(model.predict(images, batch_size=1000, verbose=0))
            problem = differences(expected, LiteModel(exported).probabilities(images))
            if problem:
                raise StageError(
                    f"the LiteRT conversion of the model is not faithful: {problem}; nothing was saved"
                )
            exported.replace(staging)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


MIXED_POLICIES = ('"mixed_float16"', '"mixed_bfloat16"')


def float32_twin(model: Any) -> Any:
    """The model itself if it computes in float32 throughout, else the same architecture and weights
    computing in float32."""
    import keras

    config = model.to_json()
    if not any(policy in config for policy in MIXED_POLICIES):
        return model
    for policy in MIXED_POLICIES:
        config = config.replace(policy, '"float32"')
    twin = keras.models.model_from_json(config)
    twin.set_weights(model.get_weights())
    return twin


EXPORT_UNDER_TENSORFLOW = """
import sys, keras
from stages.serving.export import float32_twin
model = float32_twin(keras.saving.load_model(sys.argv[1], safe_mode=True))
model.export(sys.argv[2], format="litert", verbose=False)
"""


def _export_under_tensorflow(keras_file: Path, dest: Path) -> None:
    command = [sys.executable, "-c", EXPORT_UNDER_TENSORFLOW, str(keras_file), str(dest)]
    done = subprocess.run(
        command, env=os.environ | {"KERAS_BACKEND": "tensorflow"}, capture_output=True, text=True
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise StageError(
            f"converting the model to LiteRT failed ({last}): Keras converts from TensorFlow, so install "
            "tensorflow beside the backend you train on"
        )
