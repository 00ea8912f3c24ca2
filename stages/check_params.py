"""check_params: validate the whole of params.yaml before any other stage runs.

`dvc repro` deletes a stage's outputs before it runs the stage's command, so a typo found by the train
stage itself would already have cost the previous model and metrics. This stage tracks every key of
params.yaml (an unknown top-level key too) and sits upstream of everything: a bad value stops the pipeline
here, exit code 2, with every other output untouched. Its output never changes, so a valid edit reruns
only the stages whose own params changed.
"""

from __future__ import annotations

import logging

from stages.core import paths, timing
from stages.core.config import load_params
from stages.core.io import atomic_path
from stages.core.runner import run_stage

log = logging.getLogger(__name__)

# Constant on purpose: downstream stages depend on this file for ordering only.
MARKER = "params.yaml passed validation (stages/check_params.py); this file orders the pipeline.\n"


def main() -> None:
    load_params()
    timing.lap("compute")
    with atomic_path(paths.PARAMS_CHECKED) as tmp:
        tmp.write_text(MARKER, encoding="utf-8")
    timing.lap("save outputs")
    log.info("params.yaml is valid")


if __name__ == "__main__":
    run_stage(main)
