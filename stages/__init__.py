"""The pipeline: one module per DVC stage, and the library code they are made of.

    stages/<stage>.py   the six DVC stages (`python -m stages.<stage>`), each a short main()
    stages/core/        params schema, paths, atomic files, errors, the stage runner, timing
    stages/data/        the dataset catalogue, download sources, decoders, .npz files, splits
    stages/training/    model presets, devices and seeds, resume state, the training run's life cycle
    stages/evaluation/  test metrics and figures
    stages/reporting/   the Markdown / HTML report
    stages/tracking/    the MLflow store, lineage tags, queries over runs
    stages/cli/         the user's commands: mnist-predict, mnist-promote, mnist-runs

Importing any of it does nothing but define names: logging, backends and the like are set up by
`core.runner.run_stage`, which every entry point calls.
"""

import time

STARTED = time.perf_counter()  # imported before anything else a stage imports: see core/timing.py
