"""mnist-runs: print the last N runs of the pipeline's experiment: preset, the params that differ between
them, parameter counts, validation and test accuracy, training time and commit."""

from __future__ import annotations

import argparse

from stages.core.errors import StageError
from stages.core.runner import run_stage
from stages.tracking import store
from stages.tracking.queries import comparison, search


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mnist-runs",
        description="Print the last runs of the pipeline from MLflow, with the params that differ.",
    )
    parser.add_argument("-n", "--last", type=int, default=10, help="how many runs (default 10)")
    parser.add_argument("--experiment", default=store.EXPERIMENT, help="MLflow experiment name")
    parser.add_argument(
        "--format", choices=("plain", "markdown", "csv"), default="plain", help="table format (default plain)"
    )
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error("--last must be at least 1")
    store.connect(args.experiment)
    runs = search(args.experiment, args.last)
    if runs.empty:
        raise StageError(
            f"no finished runs in the MLflow experiment {args.experiment!r} "
            f"at {store.redact(store.tracking_uri())}: "
            "run `dvc repro` first, or set MLFLOW_TRACKING_URI to the store that has them"
        )
    table = comparison(runs)
    if args.format == "markdown":
        print(table.to_markdown(index=False))
    elif args.format == "csv":
        print(table.to_csv(index=False), end="")
    else:
        print(table.to_string(index=False))


def cli() -> None:
    """Console-script entry point."""
    run_stage(main, command=True)


if __name__ == "__main__":
    cli()
