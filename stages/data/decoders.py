"""The containers a dataset arrives in, decoded into uint8 arrays, and the proof that a copy is genuine.

Never trusting the container: IDX headers are checked against the file size, an .npz is read without
unpickling, and the classic pickle is read by an unpickler that admits numpy arrays only. Whatever the
container, `verify` then compares the arrays' content hashes with the catalogue's.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stages.core.errors import SourceError
from stages.data.catalogue import ARRAY_NAMES, DatasetSpec
from stages.data.npz import sha256_array


def decode_idx(data: bytes, what: str) -> np.ndarray:
    """Decode an IDX file (gzip'd or not) of unsigned bytes into an array, checking its header."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except EOFError as exc:
            raise SourceError(f"{what}: truncated gzip file") from exc
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise SourceError(f"{what}: corrupt gzip file ({exc})") from exc
    elif what.endswith(".gz"):
        raise SourceError(f"{what}: not a gzip file")
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or not 1 <= data[3] <= 3:
        raise SourceError(f"{what}: bad IDX header {data[:4].hex()} (expected 00 00 08 0n, unsigned bytes)")
    ndim = data[3]
    header_end = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data[4:header_end], dtype=">u4"))
    expected_size = header_end + int(np.prod(dims))
    if len(dims) != ndim or len(data) != expected_size:
        raise SourceError(f"{what}: IDX header promises {dims} ({expected_size} bytes), file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_end).reshape(dims)


def decode_npz(path: Path) -> dict[str, np.ndarray]:
    """Decode a Keras-style mnist.npz (never unpickling anything)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in ARRAY_NAMES if name not in npz.files]
            if missing:
                raise SourceError(f"{path.name}: lacks arrays {missing} (has {npz.files})")
            return {name: npz[name] for name in ARRAY_NAMES}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SourceError(f"{path.name}: not a readable .npz ({exc})") from exc


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a pickle naming any other callable is refused unrun."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise SourceError(
                f"pickle refused: it references {module}.{name}, which is not a numpy array class"
            )
        if name == "_reconstruct":
            return _empty_array
        return getattr(np, name)


def _empty_array(subtype: type, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """What a pickled array names as its constructor (numpy's internal `_reconstruct`): an empty array
    that the pickle then fills with its shape, dtype and bytes. Built with the public constructor."""
    if subtype is not np.ndarray:
        raise SourceError(f"pickle refused: it builds a {subtype!r}, not a plain numpy array")
    return np.ndarray(shape, dtype=np.dtype(dtype))


def decode_mnist_pickle(data: bytes, what: str) -> dict[str, np.ndarray]:
    """Decode the classic gzip'd `mnist.pkl.gz`: ((x, y) train, validation, test), x = byte / 256."""
    try:
        raw = gzip.decompress(data)
        splits = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except SourceError:
        raise
    except (EOFError, gzip.BadGzipFile, zlib.error, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise SourceError(f"{what}: unreadable pickle ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(splits, tuple | list) and len(splits) == 3 and all(len(s) == 2 for s in splits)):
        raise SourceError(f"{what}: expected three (images, labels) pairs")
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = splits

    def to_bytes(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256
        as_bytes = np.rint(scaled)
        if as_bytes.min() < 0 or as_bytes.max() > 255 or not np.array_equal(as_bytes, scaled):
            raise SourceError(f"{what}: pixel values are not byte/256 fractions")
        return as_bytes.astype(np.uint8).reshape(len(x), 28, 28)

    def to_labels(y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        if y.size and (y.min() < 0 or y.max() > 255):
            raise SourceError(f"{what}: labels out of range")
        return y.astype(np.uint8)

    return {
        "x_train": np.concatenate([to_bytes(x_tr), to_bytes(x_va)]),
        "y_train": np.concatenate([to_labels(y_tr), to_labels(y_va)]),
        "x_test": to_bytes(x_te),
        "y_test": to_labels(y_te),
    }


def verify(spec: DatasetSpec, arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Prove `arrays` are the genuine dataset: dtype, shapes, then content hashes. Returns the hashes."""
    hashes = {}
    for name in ARRAY_NAMES:
        array = arrays[name]
        if array.dtype != np.uint8:
            raise SourceError(f"{name} has dtype {array.dtype}, expected uint8")
        if array.shape != spec.expected_shape(name):
            raise SourceError(f"{name} has shape {array.shape}, expected {spec.expected_shape(name)}")
        hashes[name] = sha256_array(array)
        if hashes[name] != spec.array_sha256[name]:
            raise SourceError(
                f"{name} differs from the genuine {spec.name} (content sha256 {hashes[name][:16]}..., "
                f"expected {spec.array_sha256[name][:16]}...)"
            )
    return hashes
