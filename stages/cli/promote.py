"""mnist-promote: make the newest model version the `champion` only if it is measurably better.

The challenger is the registered version of the run in `data/train_run.json` (or `--run-id`). It takes the
alias when there is no champion yet, or when its test accuracy beats the champion's by more than
`promote.margin`; otherwise the alias stays and the command says why. Rerunning it changes nothing. It is
not a DVC stage: moving a registry alias is a decision about a shared store, not a file the pipeline
produces, so the scheduled retraining job runs it after `dvc repro` (and a person may run it by hand).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from stages.core.config import load_params
from stages.core.errors import StageError
from stages.core.runner import run_stage
from stages.tracking import store
from stages.tracking.queries import champion_run_id, model_run_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str


def _test_accuracy(client, run_id: str) -> tuple[float | None, str | None]:
    run = client.get_run(run_id)
    return run.data.metrics.get("test_accuracy"), run.data.params.get("data.dataset")


def decide(model_name: str, alias: str, run_id: str, margin: float) -> Decision:
    """Move `alias` to the run's version of `model_name` if it deserves it; say what happened and why."""
    import mlflow

    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if not versions:
        raise StageError(
            f"run {run_id} registered no version of {model_name!r}: run `dvc repro` to train and register one"
        )
    challenger = max(versions, key=lambda v: int(v.version))
    accuracy, dataset = _test_accuracy(client, run_id)
    if accuracy is None:
        raise StageError(f"run {run_id} has no test_accuracy yet: run `dvc repro evaluate` first")

    champion_version, champion_run = champion_run_id(model_name, alias)
    if champion_version == challenger.version:
        return Decision(False, f"version {challenger.version} is already the {alias}; nothing changed")
    if champion_run is not None:
        champion_accuracy, champion_dataset = _test_accuracy(client, champion_run)
        if champion_dataset != dataset:
            raise StageError(
                f"the {alias} of {model_name!r} was trained on {champion_dataset}, this run on {dataset}: "
                "their accuracies cannot be compared; set a different train.registered_model for this dataset"
            )
        if champion_accuracy is not None and accuracy <= champion_accuracy + margin:
            return Decision(
                False,
                f"version {challenger.version} ({accuracy:.4%}) does not beat the {alias}, version "
                f"{champion_version} ({champion_accuracy:.4%}), by more than the margin {margin:.4%}; "
                f"the {alias} stays",
            )
        why = f"it beats version {champion_version} ({champion_accuracy or 0:.4%}) by more than {margin:.4%}"
    else:
        why = f"there was no {alias} yet"
    client.set_registered_model_alias(model_name, alias, challenger.version)
    client.set_model_version_tag(model_name, challenger.version, "test_accuracy", f"{accuracy:.6f}")
    return Decision(True, f"version {challenger.version} ({accuracy:.4%}) is now the {alias}: {why}")


def main(argv: list[str] | None = None) -> None:
    params = load_params()
    parser = argparse.ArgumentParser(prog="mnist-promote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-id", help="the challenger's MLflow run (default: data/train_run.json's)")
    parser.add_argument(
        "--margin",
        type=float,
        default=params.promote.margin,
        help=f"accuracy it must beat the champion's by (default promote.margin = {params.promote.margin})",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.margin < 1:
        parser.error("--margin must be in [0, 1)")
    store.connect()
    run_id = args.run_id or model_run_id()
    decision = decide(params.train.registered_model, params.promote.alias, run_id, args.margin)
    print(("promoted: " if decision.promoted else "not promoted: ") + decision.reason)


def cli() -> None:
    """Console-script entry point."""
    run_stage(main, command=True)


if __name__ == "__main__":
    cli()
