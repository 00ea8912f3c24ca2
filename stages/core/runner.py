"""The one entry point of every stage and command: logging set up, expected failures turned into exit codes.

Everything a process needs before its work (log format, library log levels) happens here, when a stage
or command starts, never when a module is imported.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from stages.core import paths, stderr_filter, timing
from stages.core.errors import StageError, scrub
from stages.core.io import written


def run_stage(main: Callable[[], None], *, tensorflow: bool = False, command: bool = False) -> None:
    """Run a stage's (or command's) `main()` as a program: log to stderr, and exit 1 or 2 with one line
    naming the cause and the fix for an expected failure, 130 when interrupted.

    `tensorflow`: the stage loads TensorFlow or LiteRT (after this call: its modules import them inside
    main), whose C++ start-up lines are dropped. `command`: a console script, which logs only warnings
    and records no timings, so that its output is its answer."""
    level = logging.WARNING if command else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry warnings repeat what we report
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" on every JAX start
    timing.start()
    try:
        with tensorflow_noise_dropped() if tensorflow else contextlib.nullcontext():
            main()
        if not command:
            timing.record(_stage_name())
        # The interpreter's teardown would walk every object TensorFlow, MLflow and pandas made, in
        # several garbage collections, for memory the OS takes back anyway; frozen objects are skipped.
        # Exit handlers still run, and every output is already closed (docs/performance.md).
        gc.freeze()
    except StageError as exc:
        print(f"error: {scrub(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print(f"error: {interrupted(command)}", file=sys.stderr)
        sys.exit(130)


def interrupted(command: bool) -> str:
    """What an interrupt left, as it is: the outputs written so far are whole (each renamed into place when
    complete), the others were not written."""
    done = [str(path) for path in written() if not path.is_relative_to(paths.TRAIN_STATE)]  # checkpoints
    if command:
        return f"interrupted after writing {', '.join(done)}" if done else "interrupted"
    if not done:
        return "interrupted before writing any output; `dvc repro` runs this stage again"
    return (
        f"interrupted after writing {', '.join(done)} (each whole) and before its other outputs; "
        "`dvc repro` runs this stage again"
    )


def _stage_name() -> str:
    """`train` for `python -m stages.train`."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return (spec.name if spec else sys.argv[0]).rsplit(".", 1)[-1]


@contextlib.contextmanager
def tensorflow_noise_dropped() -> Iterator[None]:
    """Pass this process's stderr (file descriptor 2, where C++ writes too) through a filter process that
    drops TensorFlow's start-up lines (stages/core/stderr_filter.py) and passes every other line, in order,
    even the last ones of a process that aborts. TF_CPP_MIN_LOG_LEVEL cannot: the start-up lines come
    before TensorFlow reads it, and it would hide the errors that matter with the rest."""
    sys.stderr.flush()
    try:
        original = os.dup(2)
        filtering = subprocess.Popen(
            [sys.executable, "-I", "-S", str(Path(stderr_filter.__file__))],
            stdin=subprocess.PIPE,
            stderr=original,
        )
    except OSError:
        yield
        return
    os.dup2(filtering.stdin.fileno(), 2)
    filtering.stdin.close()  # fd 2 is now the pipe's only write end in this process
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer closes: the filter reads to the end and exits
        os.close(original)
        try:
            filtering.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a child of the stage still holds the pipe open
            filtering.kill()
