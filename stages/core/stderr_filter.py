"""A filter process for a stage's stderr: copies its standard input to its stderr, in order, dropping only
TensorFlow's known start-up lines (NOISE).

It runs as a separate process (`python -I -S stages/core/stderr_filter.py`, started by
`core.runner.tensorflow_noise_dropped`) rather than a thread of the stage, so that when the stage dies
(a fatal TensorFlow or CUDA error aborts it, or it is killed), the kernel closes the pipe, this process
reads to its end and writes the last lines, the ones that say why. It imports only the standard library
and ignores the terminal's Ctrl-C: it ends when the stage's side of the pipe is closed.
"""

from __future__ import annotations

import os
import re
import signal
import sys

# TensorFlow's C++ lines on a machine without a GPU, tf.data's about an attribute of its own ops, the
# LiteRT converter's progress (reading the SavedModel it converts) and the LiteRT runtime's greeting: they
# look like failures and are not. Other C++ lines (out of memory, a broken CUDA install) stay.
NOISE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWE]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform)\.cc:\d+\]"
    rb"|[IW]\d{4} [\d:.]+ +\d+ (tf_tfl_flatbuffer_helpers|reader|loader|mlir_graph_optimization_pass"
    rb"|dump_mlir_util)\.cc:\d+\]"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    rb"|To enable the following instructions:"
    rb"|.*NodeDef mentions attribute use_unbounded_threadpool"
)


def forward(source: int, destination: int) -> None:
    """Copy whole lines that are not noise; a progress bar's carriage returns go through at once."""
    pending = b""
    while chunk := os.read(source, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
        if b"\r" in pending:
            shown, _, pending = pending.rpartition(b"\r")
            kept += shown + b"\r"
        if kept:
            _write_all(destination, kept)
    if pending and not NOISE.match(pending):
        _write_all(destination, pending)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stage decides what Ctrl-C means; we drain the pipe
    try:
        forward(sys.stdin.fileno(), sys.stderr.fileno())
    except OSError:  # the terminal went away: nothing left to write to
        sys.exit(0)
