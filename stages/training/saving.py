"""The model file train writes: the same weights give the same bytes, so DVC sees no change where there
is none, and a fresh clone's `dvc repro` reproduces the committed dvc.lock."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from stages.core.io import atomic_path


def save_model(model: Any, dest: Path | str) -> None:
    """Save a Keras model so that the same weights give the same bytes. Keras stamps the time of saving
    into metadata.json and the weights' zip entry, and numbers objects that layers share (their dtype
    policy) by their memory address in config.json; DVC would see a new model on every run (and a fresh
    clone's first `dvc repro` would change dvc.lock). So the stamps go, and the shared objects are numbered
    in the order they appear, which keeps which layers share what.

    Written atomically: Keras saves into a hidden scratch folder beside `dest` (it wants a `.keras` name),
    named as `atomic_path` names its temporary files, so the next write clears one a kill left behind."""
    dest = Path(dest)
    with atomic_path(dest) as staging:
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent) as scratch:
            saved_file = Path(scratch) / "model.keras"
            model.save(saved_file)
            with zipfile.ZipFile(saved_file) as saved:
                entries = [(info, saved.read(info)) for info in saved.infolist()]
        _write_fixed(entries, staging)


def _write_fixed(entries: list, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w") as fixed:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumbered(json.loads(data), {})).encode()
            fixed.writestr(zipfile.ZipInfo(info.filename, FIXED_ZIP_TIME), data, info.compress_type)


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
