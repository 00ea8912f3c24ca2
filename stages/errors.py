"""The pipeline's two kinds of expected failure, and the one entry point that turns them into exit codes.

A stage raises `ConfigError` or `StageError` with a message that names the cause and the fix; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable

_USERINFO_PASSWORD = re.compile(r"(\w+://[^\s:/@]+):[^\s@/]+@")


def scrub(text: str) -> str:
    """`text` with the password of every URL in it masked: library errors quote the URL they failed on."""
    return _USERINFO_PASSWORD.sub(r"\1:***@", text)


class StageError(Exception):
    """A stage cannot do its work (bad input, unreachable source, full disk...). Exit code 1."""

    exit_code = 1


class ConfigError(StageError):
    """params.yaml (or the environment) asks for something invalid. Exit code 2, before any work."""

    exit_code = 2


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's `main()` as a program: log to stderr, turn expected failures into a clean exit."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry warnings repeat what we report
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" on every JAX start
    import stages
    from stages import timing

    timing.start()
    try:
        main()
        timing.record(_stage_name())
        stages.finished()
    except StageError as exc:
        print(f"error: {scrub(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        sys.exit(130)


def _stage_name() -> str:
    """`train` for `python -m stages.train`."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return (spec.name if spec else sys.argv[0]).rsplit(".", 1)[-1]
