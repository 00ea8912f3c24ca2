"""HTTP downloads with timeouts, retries with backoff for transient errors only, and a progress bar."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies
from tqdm import tqdm
from urllib3.util.retry import Retry

from stages.core.errors import SourceError

HOST_NOT_FOUND = "host not found (no internet access or DNS?)"


@dataclass
class Http:
    """A requests session that retries what may pass (timeouts, dropped connections, HTTP 429 and 5xx)."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.5
    _session: requests.Session | None = field(default=None, init=False, repr=False)

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            retry = Retry(
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
        _check_resolves(url)
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
            return HOST_NOT_FOUND
        if "Connection refused" in text:
            return "connection refused"
        return f"{type(exc).__name__}: {text[:300]}"


def _check_resolves(url: str) -> None:
    """A host name that does not resolve is no blip (no internet, or a typo): say so at once rather than
    spend every retry's backoff on it. Behind a proxy the proxy resolves names, so nothing is checked."""
    parts = urlparse(url)
    if not parts.hostname or get_environ_proxies(url):
        return
    try:
        socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise SourceError(HOST_NOT_FOUND) from exc
