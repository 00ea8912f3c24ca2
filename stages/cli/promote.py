"""mnist-promote: make the newest model version the `champion` only when the evidence says it is better.

The challenger is the registered version of the run in `data/train_run.json` (or `--run-id`). It takes the
alias when there is no champion yet, or when, on the same test images, it fixes more of the champion's
mistakes than it breaks and the exact McNemar test on those images gives p below `promote.alpha`, with an
accuracy gain above `promote.margin` (stages/evaluation/paired.py). Otherwise the alias stays, and the one
line printed says why, with the counts and the p-value. Rerunning it changes nothing.

It is not a DVC stage: moving a registry alias is a decision about a shared store, not a file the pipeline
produces, so the scheduled retraining job runs it after `dvc repro` (and a person may run it by hand).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from stages.core.config import load_params
from stages.core.errors import StageError
from stages.core.runner import run_stage
from stages.evaluation.paired import paired_test, verdict
from stages.tracking import predictions, store
from stages.tracking.queries import champion_version, model_run_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    notes: tuple[str, ...] = ()  # said before the decision: predictions computed rather than stored


def _dataset(client, run_id: str) -> str | None:
    return client.get_run(run_id).data.params.get("data.dataset")


def _challenger(client, model_name: str, run_id: str):
    versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if not versions:
        raise StageError(
            f"run {run_id} registered no version of {model_name!r}: run `dvc repro` to train and register one"
        )
    return max(versions, key=lambda v: int(v.version))


def decide(model_name: str, alias: str, run_id: str, alpha: float, margin: float) -> Decision:
    """Move `alias` to the run's version of `model_name` if the paired test says so; say why."""
    import mlflow

    client = mlflow.MlflowClient()
    challenger = _challenger(client, model_name, run_id)
    champion = champion_version(model_name, alias)
    new, old = f"version {challenger.version}", f"version {champion.version}" if champion else ""
    if champion is None:
        reason = f"{new} is now the {alias}: there was no {alias} yet"
        return _promote(client, model_name, alias, challenger, reason)
    if champion.version == challenger.version:
        return Decision(False, f"{new} is already the {alias}; nothing changed")
    if champion.run_id == challenger.run_id:  # the same training, packaged again (new serving code)
        reason = f"{new} is {old}'s own training run, packaged again: {new} is now the {alias}"
        return _promote(client, model_name, alias, challenger, reason)
    datasets = _dataset(client, challenger.run_id), _dataset(client, champion.run_id)
    if datasets[0] != datasets[1]:
        raise StageError(
            f"the {alias} of {model_name!r} ({old}) was trained on {datasets[1]}, {new} on {datasets[0]}: "
            "they cannot be compared; set a different train.registered_model for this dataset"
        )
    mine, theirs = predictions.of_version(challenger), predictions.of_version(champion)
    notes = tuple(note for note in (mine.how(new), theirs.how(old)) if note)
    test = paired_test(mine.predictions, theirs.predictions)
    rule = verdict(test, alpha, margin)
    counts = f"{new} fixes {len(test.fixed)} test images and breaks {len(test.broken)} of {old}'s {rule.why}"
    if not rule.promote:
        return Decision(False, f"{counts}: the {alias} stays", notes)
    reason = f"{counts}: {new} is now the {alias}"
    return _promote(client, model_name, alias, challenger, reason, notes, repr(test.p_value))


def _promote(client, model_name, alias, challenger, reason: str, notes=(), p_value: str = "") -> Decision:
    client.set_registered_model_alias(model_name, alias, challenger.version)
    if p_value:  # the evidence, beside the version the alias moved to
        client.set_model_version_tag(model_name, challenger.version, "promotion.p_value", p_value)
    return Decision(True, reason, notes)


def main(argv: list[str] | None = None) -> None:
    params = load_params()
    parser = argparse.ArgumentParser(prog="mnist-promote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-id", help="the challenger's MLflow run (default: data/train_run.json's)")
    parser.add_argument(
        "--alpha",
        type=float,
        default=params.promote.alpha,
        help=f"the paired test's p-value must be below this (default promote.alpha = {params.promote.alpha})",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=params.promote.margin,
        help=f"accuracy it must beat the champion's by (default promote.margin = {params.promote.margin})",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.margin < 1:
        parser.error("--margin must be in [0, 1)")
    if not 0 < args.alpha < 1:
        parser.error("--alpha must be in (0, 1)")
    store.connect()
    run_id = args.run_id or model_run_id()
    decision = decide(params.train.registered_model, params.promote.alias, run_id, args.alpha, args.margin)
    for note in decision.notes:
        print(note)
    print(("promoted: " if decision.promoted else "not promoted: ") + decision.reason)


def cli() -> None:
    """Console-script entry point."""
    run_stage(main, tensorflow=True, command=True)  # a champion without predictions runs LiteRT


if __name__ == "__main__":
    cli()
