"""The pipeline's stages (one module each) and the code they share."""

import atexit
import os
import sys
import time

STARTED = time.perf_counter()  # imported before anything else a stage imports: see stages/timing.py
_finished = {"ok": False}


def finished() -> None:
    """A stage run as a program (`python -m stages.<name>`) did all its work: skip the interpreter's teardown.

    Tearing down TensorFlow, pyarrow and SQLAlchemy objects module by module costs 0.2-1.5 s per stage
    (bench/overhead.py), after every output is already closed and renamed into place. Only for a stage's
    own process: anything else (pytest importing a stage) keeps its exit code and teardown.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name.startswith(f"{__name__}."):
        _finished["ok"] = True


def _exit_without_teardown() -> None:
    """Registered when `stages` is first imported, so it runs after every exit handler registered later
    (they run in reverse order) and after the interpreter has joined the non-daemon threads."""
    if _finished["ok"]:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)


# Handlers registered before this import (at interpreter start-up: coverage's subprocess hook, a
# sitecustomize) would run after ours and be skipped: then keep the normal exit. `_ncallbacks` is
# CPython's; elsewhere the normal exit is kept too.
if getattr(atexit, "_ncallbacks", lambda: 1)() == 0:
    atexit.register(_exit_without_teardown)
