"""Run a stage with a kill at an exact moment: `python tests/faults.py POINT stages.train` (or another).

The process SIGKILLs itself at POINT, after first tearing the file it was writing in half, which is what
a kill in the middle of that write leaves on disk. Nothing is mocked: the stage runs its real code, real
Keras and real MLflow up to that moment.

    checkpoint  while writing the checkpoint after epoch 2
    model       while writing data/model/model.keras
    registered  right after MLflow registered the model version, before the stage finished (report)
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _tear(path: str | os.PathLike) -> None:
    size = Path(path).stat().st_size
    with Path(path).open("r+b") as fh:
        fh.truncate(size // 2)


def install(point: str) -> None:
    import keras
    import mlflow

    if point == "checkpoint":
        save_weights = keras.Model.save_weights
        calls = []

        def torn_save_weights(self, filepath, *args, **kwargs):
            save_weights(self, filepath, *args, **kwargs)
            calls.append(filepath)
            if len(calls) == 2:
                _tear(filepath)
                _die()

        keras.Model.save_weights = torn_save_weights
    elif point == "model":
        save = keras.Model.save

        def torn_save(self, filepath, *args, **kwargs):
            save(self, filepath, *args, **kwargs)
            _tear(filepath)
            _die()

        keras.Model.save = torn_save
    elif point == "registered":
        register = mlflow.register_model

        def register_then_die(*args, **kwargs):
            register(*args, **kwargs)
            _die()

        mlflow.register_model = register_then_die
    else:
        raise SystemExit(f"unknown fault point {point!r}")


if __name__ == "__main__":
    fault, module = sys.argv[1], sys.argv[2]
    install(fault)
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
