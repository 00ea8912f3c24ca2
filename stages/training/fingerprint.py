"""What makes two trainings the same, so that one may resume the other's checkpoints.

As nanoGPT's checkpoint carries the `model_args` that made it, a training's checkpoints carry a
fingerprint of four parts, each a SHA-256: the settings in effect (the preset's defaults resolved with
params.yaml's overrides, the seed, the precision), the model's architecture (its Keras config), the
prepared data (each split's file hash), and the code DVC declares for the train stage (every file under
its `stages/` deps). A rerun resumes only when all four match; otherwise the checkpoints are set aside,
with one log line naming the parts that differ, and a new MLflow run starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from stages.core.errors import StageError

PARTS = ("settings", "architecture", "data", "code")
CODE_ROOT = "stages"
DVC_FILE = Path("dvc.yaml")
# What the model config names but does not decide: the data (a part of its own), and the registered name.
NOT_SETTINGS = ("dataset", "data_content_sha256", "splits")


def digest(value: Any) -> str:
    """SHA-256 of a JSON-able value, the same for equal values (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(
    model_config: Mapping[str, Any],
    architecture: Mapping[str, Any],
    meta: Mapping[str, Any],
    stage: str = "train",
) -> dict[str, str]:
    """The four parts for a training with these settings (train's `model_config`), this architecture
    (the model's Keras config), this prepared data (preprocess's meta.json) and this checkout's code."""
    settings = {key: value for key, value in model_config.items() if key not in NOT_SETTINGS}
    return {
        "settings": digest(settings),
        "architecture": digest(architecture),
        "data": digest([meta["content_sha256"], meta["files_md5"]]),
        "code": declared_code_digest(stage),
    }


def differences(recorded: Mapping[str, str] | None, current: Mapping[str, str]) -> list[str]:
    """The parts in which two fingerprints differ (every part when the recorded one is unknown)."""
    if recorded is None:
        return list(current)
    return [part for part in current if recorded.get(part) != current[part]]


def describe(parts: list[str]) -> str:
    """The differing parts as the set-aside line says them: "its settings, architecture and code differ"."""
    named = f"{', '.join(parts[:-1])} and {parts[-1]}" if len(parts) > 1 else parts[0]
    return f"its {named} differ{'s' if len(parts) == 1 else ''} from this training's"


def declared_code(stage: str, dvc_file: Path = DVC_FILE) -> tuple[Path, list[Path]]:
    """The Python files under the stage's `stages/` deps in dvc.yaml (the code DVC reruns it for), sorted,
    relative to the returned root. Outside a pipeline checkout (a benchmark's scratch folder, with no
    dvc.yaml) there are no declared deps: then every module of the installed package counts."""
    if not dvc_file.is_file():
        package = Path(__file__).resolve().parents[1]
        return package.parent, sorted(path.relative_to(package.parent) for path in package.rglob("*.py"))
    try:
        deps = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["stages"][stage]["deps"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise StageError(
            f"cannot read the deps of stage {stage!r} from {dvc_file} ({exc}); fix dvc.yaml"
        ) from exc
    root = dvc_file.parent
    files: set[Path] = set()
    for dep in deps:
        path = Path(dep)
        if path.parts[:1] != (CODE_ROOT,):
            continue
        found = (root / path).rglob("*.py") if (root / path).is_dir() else [root / path]
        files |= {file.relative_to(root) for file in found}
    return root, sorted(files)


def declared_code_digest(stage: str, dvc_file: Path = DVC_FILE) -> str:
    """One hash of the stage's declared code: each file's path and content."""
    root, files = declared_code(stage, dvc_file)
    hashed = hashlib.sha256()
    for path in files:
        hashed.update(path.as_posix().encode() + b"\0" + (root / path).read_bytes() + b"\0")
    return hashed.hexdigest()
