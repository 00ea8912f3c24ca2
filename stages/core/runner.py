"""The one entry point of every stage and command: logging set up, expected failures turned into exit codes.

Everything a process needs before its work (log format, library log levels) happens here, when a stage
or command starts, never when a module is imported.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from stages.core import timing
from stages.core.errors import StageError, scrub


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's (or command's) `main()` as a program: log to stderr, and exit 1 or 2 with one line
    naming the cause and the fix for an expected failure, 130 when interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry warnings repeat what we report
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" on every JAX start
    timing.start()
    try:
        main()
        timing.record(_stage_name())
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
