"""The pipeline's expected failures. Each message names the cause and the fix; anything else is a bug
and keeps its traceback (see `core.runner.run_stage`)."""

from __future__ import annotations

import re

_USERINFO_PASSWORD = re.compile(r"(\w+://[^\s:/@]+):[^\s@/]+@")


_USERINFO = re.compile(r"(\b[A-Za-z][\w+.\-]*://)[^\s/@'\"]+@")


def scrub(text: str) -> str:
    """`text` with the password of every URL in it masked: library errors quote the URL they failed on."""
    return _USERINFO_PASSWORD.sub(r"\1:***@", text)


def without_userinfo(text: str) -> str:
    """`text` with the user info (`user:password@`) of every URL in it removed: for data URLs that reach a
    log, the provenance file or the report, where not even the user name belongs."""
    return _USERINFO.sub(r"\1", text)


def has_userinfo(text: str) -> bool:
    """Whether any URL in `text` carries user info."""
    return _USERINFO.search(text) is not None


class StageError(Exception):
    """A stage cannot do its work (bad input, unreachable source, full disk...). Exit code 1."""

    exit_code = 1


class ConfigError(StageError):
    """params.yaml (or the environment) asks for something invalid. Exit code 2, before any work."""

    exit_code = 2


class SourceError(Exception):
    """One data source could not deliver a genuine copy; the message is the reason, shown to the user.
    The download tries the next source; only when every one failed does it become a StageError."""
