"""What a run records besides its figures: params as MLflow wants them, and which code, data, device and
library versions produced it."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from stages.core.errors import ConfigError, has_userinfo
from stages.tracking import trial


def flatten(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """params.yaml as MLflow params: `train.model` -> `fast_cnn`; lists and None as text."""
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, str(value)


def _git(*args: str, strip: bool = True) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() if strip else done.stdout


# The packages the other Keras backends run on: a served model needs them beside Keras.
BACKEND_PACKAGES = {"jax": ("jax", "jaxlib"), "torch": ("torch",)}


def library_versions() -> dict[str, str]:
    """The versions a trained model depends on: Keras and the packages of the backend it ran on."""
    import keras

    versions = {"keras": keras.__version__}
    backend = keras.backend.backend()
    if backend == "tensorflow":  # by import: TensorFlow ships under several names (tensorflow-cpu, ...)
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    else:
        for package in BACKEND_PACKAGES.get(backend, ()):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[package] = importlib.metadata.version(package)
    return versions


def lineage_tags(data_hash: str, device: str) -> dict[str, str]:
    """Which code, data and experiment produced a run, and on what."""
    import keras
    import mlflow

    commit = _git("rev-parse", "HEAD")
    changed = changed_files()
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if changed is None else str(bool(changed)).lower(),
        "dvc.experiment": os.environ.get("DVC_EXP_NAME", "(workspace)"),
        "data.content_sha256": data_hash,
        "device": device,
        "keras.backend": keras.backend.backend(),
        "version.mlflow": mlflow.__version__,
        "version.python": platform.python_version(),
    }
    tags |= {f"version.{name}": version for name, version in library_versions().items()}
    if changed:
        shown = ", ".join(changed[:20]) + (f" and {len(changed) - 20} more" if len(changed) > 20 else "")
        tags["git.changed_files"] = shown
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if (context := trial.from_environment()) is not None:
        tags |= context.tags()
    return tags


# What the pipeline itself rewrites before a run is recorded: not a change to the code or params.
PIPELINE_OUTPUTS = ("dvc.lock", "metrics/")


def changed_files() -> list[str] | None:
    """Tracked files that differ from the commit, apart from the pipeline's own outputs; None outside git."""
    status = _git("status", "--porcelain", "--untracked-files=no", "-z", strip=False)
    if status is None:
        return None
    names = [entry[3:] for entry in status.split("\0") if len(entry) > 3]  # "XY path"
    return [name for name in names if not name.startswith(PIPELINE_OUTPUTS)]


SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def split_dataset(meta: dict[str, Any], split: str, source: str, arrays: tuple | None = None) -> Any:
    """A prepared split as an MLflow dataset named `<dataset>/<split>` whose digest is its .npz file's MD5
    (what DVC's cache names it by). With `arrays` (images, labels), a full `mlflow.data` dataset with its
    schema, for `log_input`; without, the entity that `log_metrics(dataset=...)` links figures to."""
    import mlflow.data
    from mlflow.entities import Dataset

    name, digest = f"{meta['dataset']}/{split}", meta["files_md5"][split]
    if arrays is None:
        return Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}))
    images, labels = arrays
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": two local sources, same class
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_numpy(images, targets=labels, source=source, name=name, digest=digest)


_SECRET = re.compile(r"(password|secret|token|key)", re.IGNORECASE)


def leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of nested mappings and lists, named by its path: `data.sources.0.url`."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from leaves(item, f"{prefix}{key}.")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from leaves(item, f"{prefix}{index}.")
    else:
        yield prefix.removesuffix("."), value


def check_no_secrets(values: Mapping[str, Any]) -> None:
    """Refuse to log anything that looks like a credential: a URL with user info anywhere in any leaf of
    (nested) `values`, or a value under a key that names a credential. The message never quotes it."""
    for key, value in leaves(values):
        text = "" if value is None else str(value)
        if has_userinfo(text):
            raise ConfigError(
                f"{key} holds a URI with a password or a user name; refusing to log it to MLflow"
            )
        if _SECRET.search(key) and text not in ("None", ""):
            raise ConfigError(f"{key} looks like a credential; refusing to log it to MLflow")
