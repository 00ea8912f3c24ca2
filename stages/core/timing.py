"""Where a stage's time goes: its imports, then named phases (loading data, fit, MLflow, saving...).

A stage wraps each phase in `with phase("fit"):` (or calls `lap("load data")` after it: the time since
the previous lap is charged to that name). `run_stage` logs the breakdown as one line at the end, and
appends it as JSON to the file named by `MNIST_PIPELINE_TIMINGS` when set, which is how
bench/overhead.py breaks a whole `dvc repro` down.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stages import STARTED

log = logging.getLogger(__name__)

TIMINGS_ENV = "MNIST_PIPELINE_TIMINGS"
_phases: dict[str, float] = {}
_last = {"at": 0.0, "main": 0.0}


def start() -> None:
    """The stage's main() begins: everything before it was imports."""
    _last["at"] = _last["main"] = time.perf_counter()


def lap(name: str) -> float:
    """Charge the time since the previous lap (or the start of main) to the phase `name`; return it."""
    now = time.perf_counter()
    seconds = now - _last["at"]
    _phases[name] = _phases.get(name, 0.0) + seconds
    _last["at"] = now
    return seconds


@dataclass
class Elapsed:
    """The seconds a `phase` block took, once it has ended."""

    seconds: float = 0.0


@contextlib.contextmanager
def phase(name: str) -> Iterator[Elapsed]:
    """Charge the time inside the block to the phase `name` (a phase may recur: its times add up)."""
    started = time.perf_counter()
    elapsed = Elapsed()
    try:
        yield elapsed
    finally:
        now = time.perf_counter()
        elapsed.seconds = now - started
        _phases[name] = _phases.get(name, 0.0) + elapsed.seconds
        _last["at"] = now


def record(stage: str) -> None:
    """At the end of a stage: the breakdown, logged, and appended to $MNIST_PIPELINE_TIMINGS if set."""
    now = time.perf_counter()
    phases = {name: round(seconds, 3) for name, seconds in _phases.items()}
    entry = {
        "stage": stage,
        "imports_s": round(_last["main"] - STARTED, 3),
        "phases_s": phases,
        "other_s": round(now - _last["main"] - sum(phases.values()), 3),
        "total_s": round(now - STARTED, 3),
    }
    shown = {"imports": entry["imports_s"], **phases, "other": entry["other_s"]}
    log.info("time: %s", ", ".join(f"{name} {seconds:.2f} s" for name, seconds in shown.items()))
    target = os.environ.get(TIMINGS_ENV)
    if target:
        with Path(target).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
