"""The one entry point of every stage and command: logging set up, expected failures turned into exit codes.

Everything a process needs before its work (log format, library log levels) happens here, when a stage
or command starts, never when a module is imported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator

from stages.core import timing
from stages.core.errors import StageError, scrub


def run_stage(main: Callable[[], None], *, tensorflow: bool = False, command: bool = False) -> None:
    """Run a stage's (or command's) `main()` as a program: log to stderr, and exit 1 or 2 with one line
    naming the cause and the fix for an expected failure, 130 when interrupted.

    `tensorflow`: the stage loads TensorFlow (after this call: its modules import it inside main), whose
    C++ start-up lines are dropped. `command`: a console script, which logs only warnings and records no
    timings, so that its output is its answer."""
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


# TensorFlow's C++ lines on a machine without a GPU, and tf.data's about an attribute of its own ops:
# they look like failures and are not. Other C++ lines (out of memory, a broken CUDA install) stay.
TENSORFLOW_NOISE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWE]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform)\.cc:\d+\]"
    rb"|To enable the following instructions:"
    rb"|.*NodeDef mentions attribute use_unbounded_threadpool"
)


@contextlib.contextmanager
def tensorflow_noise_dropped() -> Iterator[None]:
    """Pass this process's stderr (file descriptor 2, where C++ writes too) through a filter that drops
    TENSORFLOW_NOISE. TF_CPP_MIN_LOG_LEVEL cannot: the start-up lines come before TensorFlow reads it, and
    it would hide the errors that matter with the rest."""
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:
        yield
        return
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    pump = threading.Thread(target=_forward, args=(read_end, original), daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer closes: the pump reads its end and stops
        pump.join(timeout=10)
        os.close(original)


def _forward(read_end: int, destination: int) -> None:
    """Copy whole lines that are not noise; a progress bar's carriage returns go through at once."""
    pending = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(read_end, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not TENSORFLOW_NOISE.match(line):
                    os.write(destination, line + b"\n")
            if b"\r" in pending:
                shown, _, pending = pending.rpartition(b"\r")
                os.write(destination, shown + b"\r")
        if pending and not TENSORFLOW_NOISE.match(pending):
            os.write(destination, pending)
    os.close(read_end)
