"""The .npz files of the data stages: byte-reproducible, written atomically, loaded with a clear error.

Reproducible: `np.savez` stamps each zip member with the current time, so the same arrays would give a
new file hash on every run and DVC would rerun every downstream stage; the members are written here with
a fixed timestamp instead.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from stages.core.errors import StageError
from stages.core.io import atomic_path

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_npz(dest: Path | str, arrays: Mapping[str, np.ndarray], *, compress: bool = False) -> None:
    """Write `arrays` as an .npz that `np.load` reads, atomically and with the same bytes every time.

    `compress` deflates at level 1: for raw pixels nearly numpy's size (level 6) in about half the time
    (docs/performance.md).
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


def sha256_array(array: np.ndarray) -> str:
    """The content hash of an array's bytes in C order: what data-sources.md's hashes are computed on."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
