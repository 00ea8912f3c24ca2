"""The model file train writes: the same weights give the same bytes, so DVC sees no change where there
is none, and a fresh clone's `dvc repro` reproduces the committed dvc.lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from stages.core.errors import StageError


def save_model(model: Any, dest: Path | str) -> None:
    """Save a Keras model so that the same weights give the same bytes. Keras stamps the time of saving
    into metadata.json and the weights' zip entry, and numbers objects that layers share (their dtype
    policy) by their memory address in config.json; DVC would see a new model on every run (and a fresh
    clone's first `dvc repro` would change dvc.lock). So the stamps go, and the shared objects are numbered
    in the order they appear, which keeps which layers share what."""
    dest = Path(dest)
    model.save(dest)
    with zipfile.ZipFile(dest) as saved:
        entries = [(info, saved.read(info)) for info in saved.infolist()]
    with zipfile.ZipFile(dest, "w") as fixed:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumbered(json.loads(data), {})).encode()
            fixed.writestr(zipfile.ZipInfo(info.filename, FIXED_ZIP_TIME), data, info.compress_type)


def save_lite(model: Any, keras_file: Path, dest: Path, images: Any) -> None:
    """Write the model in LiteRT form (TensorFlow's own converter: the same weights give the same bytes),
    and refuse it unless it answers `images` as the Keras model does (stages/serving/lite.py).

    LiteRT runs float32: a mixed-precision model is converted, and compared, as its float32 twin (the same
    weights, which mixed precision keeps in float32 anyway). Keras converts to LiteRT from TensorFlow only,
    so a model trained on another backend is converted from its saved `keras_file`, loaded under
    TensorFlow in a process of its own."""
    import keras
    import numpy as np

    from stages.serving.lite import LiteModel, differences, record_digest

    model = float32_twin(model)
    if keras.backend.backend() == "tensorflow":
        model.export(str(dest), format="litert", verbose=False)
    else:
        _export_under_tensorflow(keras_file, dest)
    expected = np.asarray(model.predict(images, batch_size=1000, verbose=0))
    problem = differences(expected, LiteModel(dest).probabilities(images))
    if problem:
        raise StageError(f"the LiteRT conversion of the model is not faithful: {problem}; nothing was saved")
    record_digest(dest)


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
from stages.training.saving import float32_twin
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


def architecture(model: Any) -> dict[str, Any]:
    """The model's Keras config (layers, their settings, how they connect) as plain data that is the same
    for the same architecture whatever was built before it: what a checkpoint's fingerprint holds it to.
    Keras names layers by a per-process counter (`dense_3`), so names become their position."""
    config = _renumbered(json.loads(model.to_json()), {})
    config.pop("compile_config", None)  # the optimizer and its schedule: the settings part covers them
    layers = [layer["config"]["name"] for layer in config["config"]["layers"]]  # InputLayer included
    names = {name: f"layer-{i}" for i, name in enumerate(layers)} | {config["config"]["name"]: "model"}
    return _renamed(config, names)


def _renamed(config: Any, names: dict[str, str]) -> Any:
    if isinstance(config, dict):
        return {key: _renamed(value, names) for key, value in config.items()}
    if isinstance(config, list):
        return [_renamed(item, names) for item in config]
    return names.get(config, config) if isinstance(config, str) else config


FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # zip's earliest date, as Keras uses for its other entries


def _renumbered(config: Any, numbers: dict[int, int]) -> Any:
    """`config` with every `shared_object_id` replaced by 1, 2, ... in order of first appearance."""
    if isinstance(config, dict):
        renumbered = {key: _renumbered(value, numbers) for key, value in config.items()}
        if "shared_object_id" in config:
            renumbered["shared_object_id"] = numbers.setdefault(config["shared_object_id"], len(numbers) + 1)
        return renumbered
    if isinstance(config, list):
        return [_renumbered(item, numbers) for item in config]
    return config
