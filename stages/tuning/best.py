"""The best trial of a study, and how to adopt it: its experiment applied, then the rest of the pipeline
(package, evaluate, report), which registers that one model, once, like any training."""

from __future__ import annotations

from pathlib import Path

from stages.core.config import TuneConfig
from stages.core.errors import StageError
from stages.tracking import store
from stages.tuning import experiments, study
from stages.tuning.worker import EXPERIMENT_ATTR


def describe_best(root: Path, tune: TuneConfig, url: str) -> str:
    """The best trial: its params, validation figures and experiment, and the commands that adopt it."""
    import optuna

    with study.storage_errors(url):
        try:
            found = optuna.load_study(study_name=tune.study, storage=study.open_storage(url))
        except KeyError as exc:
            raise StageError(
                f"no study {tune.study!r} in {store.redact(url)}: run `mnist-tune` first"
            ) from exc
        shown = study.counts(found)
        try:
            best = found.best_trial
        except ValueError as exc:
            raise StageError(f"study {tune.study!r} has no finished trial yet ({shown})") from exc
    name = best.user_attrs.get(EXPERIMENT_ATTR, f"{tune.study}-{best.number}")
    figures = ", ".join(
        f"{key} {value:.4f}" for key, value in sorted(best.user_attrs.items()) if key.startswith("val_")
    )
    lines = [
        f"study {tune.study}: {shown}",
        f"best: trial {best.number}, {tune.metric} {best.value:.4f}" + (f" ({figures})" if figures else ""),
        *(f"  {key}: {experiments.yaml_scalar(value)}" for key, value in best.params.items()),
        f"DVC experiment: {name}",
    ]
    if not experiments.has_experiment(root, name):
        lines.append(f"  not in this repository yet: dvc exp pull origin {name}")
    lines += [
        "adopt it (evaluates it on the test set, reports and registers it, once):",
        f"  dvc exp apply {name}",
        "  dvc repro",
    ]
    return "\n".join(lines)
