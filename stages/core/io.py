"""Files every stage shares: atomic writes, and loading an earlier stage's output with a message that
says which stage to rerun.

Atomic: a stage writes to a temporary path beside the destination and renames it into place, so the
next stage never sees a half-written file, whatever kills the writer.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.core.errors import StageError

_WRITTEN: list[Path] = []  # what this process has put in place, for the runner's message on an interrupt
_FILLING: list[Path] = []  # directories being filled under atomic_path: what goes in them is no output


def written() -> list[Path]:
    """The outputs this process has written so far, each whole (atomic_path renamed it into place)."""
    return list(_WRITTEN)


@functools.cache
def _umask() -> int:
    """The process's umask, read once on the first write (reading it means setting it, briefly)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: Path | str, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success move it onto `dest`, on failure remove it."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        for stale in dest.parent.glob(f".{dest.name}.*.tmp"):  # left by a writer that was killed
            _remove(stale)
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise StageError(f"cannot write in {dest.parent}: {exc.strerror}; check its permissions") from exc
    try:
        if directory:
            _FILLING.append(tmp)
        yield tmp
        tmp.chmod((0o777 if directory else 0o666) & ~_umask())  # mkstemp/mkdtemp make them private
        _move_into_place(tmp, dest, directory)
        if not any(dest.absolute().is_relative_to(filling.absolute()) for filling in _FILLING):
            _WRITTEN.append(dest)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError):
            raise StageError(
                f"writing {dest} failed ({exc.strerror or exc}); nothing was replaced, so the earlier "
                f"outputs are as they were. Free some space (or fix the permissions of {dest.parent}) and "
                "rerun."
            ) from exc
        raise
    finally:
        if directory:
            _FILLING.remove(tmp)


def _move_into_place(tmp: Path, dest: Path, directory: bool) -> None:
    """Rename `tmp` onto `dest`. A file replaces a file in one rename; a directory cannot replace a
    non-empty one, so the old one is first renamed aside (never removed before the new one is in place)
    and renamed back if the new one cannot take its name."""
    if not (directory and dest.exists()):
        tmp.replace(dest)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", suffix=".tmp", dir=dest.parent))
    dest.replace(aside)
    try:
        tmp.replace(dest)
    except BaseException:  # a full disk, or an interrupt between the two renames: the old one goes back
        try:
            aside.replace(dest)
        except OSError as lost:
            raise StageError(
                f"writing {dest} failed, and its earlier contents could not be put back: they are in "
                f"{aside} ({lost.strerror or lost}); rename it to {dest.name} or rerun the stage"
            ) from lost
        raise
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def load_model(path: Path | str, *, produced_by: str = "train"):
    """A saved `.keras` model, loaded in Keras' safe mode, or a message that says what is wrong.

    Safe mode refuses models that would run arbitrary Python when loaded (a Lambda layer's pickled code):
    a model file is data, and it may come from a shared cache or remote.
    """
    import keras

    path = Path(path)
    rerun = f"rerun `dvc repro {produced_by}` to rebuild it"
    if not path.exists():
        raise StageError(f"{path} is missing: {rerun}")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # a bad file
        if "safe_mode" in str(exc):
            raise StageError(
                f"{path} holds code that would run when loaded (e.g. a Lambda layer); refusing it in safe "
                f"mode. Load only models you trust; {rerun}"
            ) from exc
        raise StageError(f"{path} is corrupt or unreadable ({type(exc).__name__}): {rerun}") from exc


def load_json(path: Path | str, *, produced_by: str) -> Any:
    """Load a JSON output of an earlier stage, or fail with a message that says which stage to rerun."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StageError(f"{path} is missing: rerun `dvc repro {produced_by}` to rebuild it") from exc
    except (OSError, ValueError) as exc:
        raise StageError(
            f"{path} is unreadable ({exc}): rerun `dvc repro {produced_by}` to rebuild it"
        ) from exc


def write_json(dest: Path | str, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()
