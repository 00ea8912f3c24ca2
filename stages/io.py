"""File I/O every stage shares: atomic writes, byte-reproducible .npz files, and safe loading.

Atomic: a stage writes to a temporary path beside the destination and renames it into place, so the
next stage never sees a half-written file, whatever kills the writer.
Reproducible: `np.savez` stamps each zip member with the current time, so the same arrays give a new
file hash on every run and DVC would rerun every downstream stage; we write the members ourselves with
a fixed timestamp instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stages.errors import StageError

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


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
        yield tmp
        tmp.chmod((0o777 if directory else 0o666) & ~_UMASK)  # mkstemp/mkdtemp make them private
        if directory and dest.exists():
            shutil.rmtree(dest)
        tmp.replace(dest)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError):
            raise StageError(
                f"writing {dest} failed ({exc.strerror or exc}); nothing was replaced, so the earlier "
                f"outputs are as they were. Free some space (or fix the permissions of {dest.parent}) and "
                "rerun."
            ) from exc
        raise


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def save_npz(dest: Path | str, arrays: Mapping[str, np.ndarray], *, compress: bool = False) -> None:
    """Write `arrays` as an .npz that `np.load` reads, atomically and with the same bytes every time.

    `compress` deflates at level 1: for MNIST's raw pixels, 12.8 MB in 0.34 s, where numpy's level 6
    gives 11.5 MB in 0.74 s (the two read back equally fast).
    """
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w", compression=compression, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            if compress:  # only writestr() takes a compression level: the array is serialized in memory
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
                zf.writestr(info, buffer.getbuffer(), compresslevel=1)
                continue
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def load_npz(path: Path | str, keys: tuple[str, ...], *, produced_by: str) -> dict[str, np.ndarray]:
    """Load the named arrays from an .npz, or fail with a message that says which stage to rerun."""
    path = Path(path)
    rerun = f"rerun `dvc repro {produced_by}` to rebuild it"
    if not path.exists():
        raise StageError(f"{path} is missing: {rerun}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in keys if key not in npz.files]
            if missing:
                raise StageError(f"{path} lacks the arrays {missing} (has {npz.files}): {rerun}")
            return {key: npz[key] for key in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise StageError(f"{path} is corrupt or truncated ({exc}): {rerun}") from exc


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
    except Exception as exc:  # Keras raises ValueError, OSError, zipfile and h5py errors for a bad file
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


def sha256_array(array: np.ndarray) -> str:
    """The content hash of an array's bytes in C order: what data-sources.md's hashes are computed on."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()
