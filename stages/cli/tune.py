"""mnist-tune: run trials of an Optuna study, each one a training: a DVC experiment of the pipeline up to
train, scored by its validation figure (never the test set), and an MLflow run under the study's run.

The study lives in an Optuna storage: `optuna.db` at the repository root by default, or a database every
worker reaches (`--storage` or MNIST_TUNE_STORAGE, e.g. the team's PostgreSQL), so that any number of
workers on any number of machines, started at any time, share one study and its exact trial budget
(stages/tuning/). `--best` names the best trial and the two commands that adopt it.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform

from stages.core.config import load_params
from stages.core.errors import ConfigError
from stages.core.runner import run_stage
from stages.tracking import store
from stages.tracking.trial import STORAGE_ENV
from stages.tuning import experiments, study, tracking
from stages.tuning.best import describe_best
from stages.tuning.worker import StaleTrials, Worker

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("-j", "--jobs", type=int, default=1, help="trials run at once on this machine")
    parser.add_argument(
        "--storage",
        help=f"the study's Optuna storage URL (default: ${STORAGE_ENV}, else {study.DEFAULT_STORAGE_FILE} at "
        "the repository root), e.g. postgresql://user:password@host/optuna for a team",
    )
    parser.add_argument(
        "--worker",
        default=None,
        help="this worker's name, which seeds its sampler with the number of trials already run (default: "
        "0 with the embedded file; else the host and process)",
    )
    parser.add_argument("--best", action="store_true", help="print the best trial and how to adopt it")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: run at least one trial at a time")
    root = store.repository_root()
    params = load_params(root / "params.yaml")
    url = study.storage_url(args.storage, root)
    if args.best:
        print(describe_best(root, params.tune, url))
        return
    study.check_comparable(params)
    worker_name = args.worker or ("0" if url.startswith("sqlite:///") else f"{platform.node()}-{os.getpid()}")

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's outcome is logged here, once
    storage = study.open_storage(url, on_stale=StaleTrials())
    experiments.check_data(root)
    found, prefix = study.open_study(params.tune, url, storage, worker_name, root)
    experiment_id = store.connect()
    parent = store.retrying(
        lambda: tracking.study_run(experiment_id, params.tune), "finding or starting the study's MLflow run"
    )
    worker = Worker(root, params.tune, url, storage, found, prefix, parent, jobs=args.jobs)
    with study.storage_errors(url):
        worker.work()
        tracking.update_study_run(parent, found, params.tune)
        log.info("study %s: %s", params.tune.study, study.counts(found))
    log.info("this worker ran %d trial(s): %s", len(worker.ran), ", ".join(worker.ran) or "none")


def cli() -> None:
    run_stage(main)


if __name__ == "__main__":
    cli()
