"""The study's MLflow run, which every trial's training run is a child of: the search's settings, the best
trial so far, and Optuna's own figures (optimization history, parameter importances, parallel
coordinates), refreshed as trials finish; and the end of a trial's run that no training will end."""

from __future__ import annotations

import json
import logging
import warnings
from typing import TYPE_CHECKING

from stages.core.config import TuneConfig
from stages.tracking import store
from stages.tracking.trial import KIND_TAG, STATE_TAG, STUDY_TAG, TRIAL_TAG

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

FIGURES = ("optimization_history", "param_importances", "parallel_coordinate")  # optuna.visualization's


def study_run(experiment_id: str, tune: TuneConfig) -> str:
    """The study's MLflow run, which every trial's run is a child of: found, or made by the first worker.
    Two workers starting at once may both make one; both then keep the older and the other is deleted."""
    import mlflow

    client = mlflow.MlflowClient()

    def existing() -> list:
        return client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{tune.study}' AND tags.`{KIND_TAG}` = 'study'",
            order_by=["attributes.start_time ASC"],
        )

    found = existing()
    if found:
        return found[0].info.run_id
    made = client.create_run(
        experiment_id, run_name=f"study {tune.study}", tags={STUDY_TAG: tune.study, KIND_TAG: "study"}
    ).info.run_id
    from mlflow.entities import Param

    params = {"tune.trials": tune.trials, "tune.seed": tune.seed, "tune.metric": tune.metric}
    params |= {f"tune.space.{key}": json.dumps(dim.model_dump()) for key, dim in tune.space.items()}
    client.log_batch(made, params=[Param(key, str(value)) for key, value in params.items()])
    oldest = sorted(existing(), key=lambda run: (run.info.start_time, run.info.run_id))[0].info.run_id
    if oldest != made:
        client.delete_run(made)
    return oldest


def update_study_run(run_id: str, study: optuna.Study, tune: TuneConfig) -> None:
    """The study's run shows the best trial so far, and ends once every trial of the budget has."""
    import mlflow
    from optuna.trial import TrialState

    client = mlflow.MlflowClient()
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    try:
        client.log_metric(run_id, "trials_done", len(done))
        if complete:
            best = study.best_trial
            client.log_metric(run_id, f"best_{tune.metric}", best.value)
            client.set_tag(run_id, "best_trial", str(best.number))
            client.set_tag(run_id, "best_experiment", str(best.user_attrs.get("experiment", "")))
            log_figures(run_id, study)
        running = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        if len(done) >= tune.trials and not running:
            client.set_terminated(run_id, "FINISHED")
    except Exception as exc:  # the study goes on; its run catches up after the next trial
        log.warning("could not update the study's MLflow run: %s", store.describe(exc))


def log_figures(run_id: str, study: optuna.Study) -> None:
    """Optuna's own figures of the study so far, as images in its run (figures/<name>.png), each replaced
    as trials finish. One a study cannot draw yet (importances need two finished trials) waits."""
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.visualization import matplotlib as figures

    client = mlflow.MlflowClient()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # "too few trials" for importances: drawn all the same
        for name in FIGURES:
            try:
                axes = getattr(figures, f"plot_{name}")(study)
            except (ValueError, RuntimeError) as exc:
                log.debug("no %s figure yet: %s", name, exc)
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            client.log_figure(run_id, figure, f"figures/{name}.png")
            plt.close(figure)


def mark_trial_runs(study: str, number: int, status: str, state: str) -> None:
    """End the MLflow run(s) of a trial that no longer runs: pruned (KILLED), or its worker died (FAILED)."""
    import mlflow

    client = mlflow.MlflowClient()  # the worker has connected to the store
    try:
        runs = client.search_runs(
            [client.get_experiment_by_name(store.EXPERIMENT).experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{study}' AND tags.`{TRIAL_TAG}` = '{number}'",
        )
        for run in runs:
            client.set_tag(run.info.run_id, STATE_TAG, state)
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status)
    except Exception as exc:
        log.warning("could not mark trial %d's MLflow run %s: %s", number, state, store.describe(exc))
