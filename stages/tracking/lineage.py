"""What a run records besides its figures: params as MLflow wants them, and which code, data, device and
library versions produced it."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from stages.core.errors import ConfigError


def flatten(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """params.yaml as MLflow params: `train.model` -> `fast_cnn`; lists and None as text."""
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, str(value)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


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
    status = _git("status", "--porcelain", "--untracked-files=no")
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "dvc.experiment": os.environ.get("DVC_EXP_NAME", "(workspace)"),
        "data.content_sha256": data_hash,
        "device": device,
        "keras.backend": keras.backend.backend(),
        "version.mlflow": mlflow.__version__,
        "version.python": platform.python_version(),
    }
    tags |= {f"version.{name}": version for name, version in library_versions().items()}
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


_SECRET = re.compile(r"(password|secret|token|key)", re.IGNORECASE)


def check_no_secrets(values: Mapping[str, str]) -> None:
    """Refuse to log anything that looks like a credential (user:password@ in a URI)."""
    for key, value in values.items():
        if "@" in value and urlsplit(value).password is not None:
            raise ConfigError(f"{key} holds a URI with a password; refusing to log it to MLflow")
        if _SECRET.search(key) and value not in ("None", ""):
            raise ConfigError(f"{key} looks like a credential; refusing to log it to MLflow")
