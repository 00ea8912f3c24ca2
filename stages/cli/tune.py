"""mnist-tune: run trials of an Optuna study, each one a DVC experiment of the whole pipeline.

A trial draws values for the keys of `tune.space` (params.yaml), runs `dvc exp run --temp` with them as
`-S` values, named `<study>-<number>`, and scores the experiment by its validation figure
(metrics/train.json; never the test set). Its training is an MLflow run tagged with the study and trial,
under the study's own run, and reports each epoch to the study so that its pruner can stop it early.

The study lives in an Optuna storage: `optuna.db` at the repository root by default, or a database every
worker reaches (`--storage` or MNIST_TUNE_STORAGE, e.g. the team's PostgreSQL), so that any number of
workers on any number of machines share one study: each trial runs once, the trial budget holds across
workers, and a worker that dies leaves its trial failed once its heartbeat stops (another worker then runs
a trial in its place).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.core.config import Choice, FloatRange, IntRange, TuneConfig, load_params
from stages.core.errors import ConfigError, StageError
from stages.core.runner import run_stage
from stages.tracking import store
from stages.tracking.trial import (
    KIND_TAG,
    PRUNED_AT_ATTR,
    STATE_TAG,
    STORAGE_ENV,
    STUDY_TAG,
    TRIAL_TAG,
    TrialContext,
    make_pruner,
    optuna_storage,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

DEFAULT_STORAGE_FILE = "optuna.db"  # at the repository root, git-ignored
HEARTBEAT_ENV = "MNIST_TUNE_HEARTBEAT_S"  # how often a worker says its trials are alive
HEARTBEAT_S = 30
STALE_AFTER_HEARTBEATS = 4  # a RUNNING trial silent this long belonged to a dead worker: it is failed
FAILURES_IN_A_ROW = 3  # a worker stops after so many failed trials in a row: something is broken
LOG_DIR = Path("data") / "tune"  # each trial's `dvc exp run` output: data/tune/<study>/<experiment>.log
LOG_TAIL_LINES = 15


class TrialFailedError(Exception):
    """A trial's `dvc exp run` failed (not pruned): Optuna records it as FAIL and the worker goes on."""


class BudgetReachedError(Exception):
    """Another worker took the study's last trial at the same moment: this one runs nothing."""


def counted_states() -> tuple:
    """The trials that use up the budget: finished, pruned, or under way. Failed ones are run again."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def storage_url(option: str | None, root: Path) -> str:
    """--storage, else MNIST_TUNE_STORAGE, else the embedded file at the repository root. A plain
    `postgresql://` means psycopg 3 (installed), not psycopg2 (SQLAlchemy's default, not installed)."""
    url = (option or os.environ.get(STORAGE_ENV, "")).strip() or f"sqlite:///{root / DEFAULT_STORAGE_FILE}"
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def yaml_scalar(value: Any) -> str:
    """A `-S key=value` value that YAML reads back as the same type (PyYAML wants `1.0e-05`, not `1e-05`)."""
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    return json.dumps(value)


def suggest(trial: optuna.Trial, key: str, dimension: FloatRange | IntRange | Choice) -> Any:
    """The trial's value for one key of the space (Optuna remembers it under that key)."""
    if isinstance(dimension, FloatRange):
        return trial.suggest_float(key, dimension.low, dimension.high, log=dimension.log)
    if isinstance(dimension, IntRange):
        return trial.suggest_int(key, dimension.low, dimension.high, step=dimension.step, log=dimension.log)
    return trial.suggest_categorical(key, dimension.choices)


def study_settings(tune: TuneConfig) -> dict[str, Any]:
    """What must agree between the workers of one study, kept with the study."""
    return {"metric": tune.metric, "direction": tune.direction, "space": tune.model_dump()["space"]}


@dataclass
class Worker:
    """One `mnist-tune` process: its study, its MLflow parent run, and the trials it ran."""

    root: Path
    tune: TuneConfig
    url: str
    storage: optuna.storages.RDBStorage
    study: optuna.Study
    parent_run_id: str
    failures_in_a_row: int = 0
    ran: list[str] = field(default_factory=list)
    stopping: bool = False
    # Held from a thread's budget check until its trial exists (RUNNING), so that this worker's threads
    # never take the same last trial; between machines, `_refuse_surplus` keeps the count exact.
    gate: threading.Lock = field(default_factory=threading.Lock)
    holding: threading.local = field(default_factory=threading.local)
    study_run_lock: threading.Lock = field(default_factory=threading.Lock)

    def remaining(self) -> int:
        """Trials still to start: the budget left, and enqueued trials (WAITING: in the budget already)."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        counted = sum(trial.state in counted_states() for trial in trials)
        waiting = sum(trial.state == TrialState.WAITING for trial in trials)
        return max(self.tune.trials - counted, 0) + waiting

    def loop(self) -> None:
        """One thread's trials, one at a time, until the study has its budget or the worker stops. Each is
        Optuna's `optimize` of one trial: it keeps the trial's heartbeat and fails dead workers' trials."""
        while not self.stopping:
            self.gate.acquire()
            self.holding.gate = True
            try:
                if self.stopping or self.remaining() <= 0:
                    break
                self.study.optimize(
                    self.objective,
                    n_trials=1,
                    catch=(TrialFailedError, BudgetReachedError),
                    callbacks=[self.after_trial],
                )
            finally:
                self._open_gate()

    def _open_gate(self) -> None:
        if getattr(self.holding, "gate", False):
            self.holding.gate = False
            self.gate.release()

    # ------------------------------------------------------------------------------------------ trials

    def objective(self, trial: optuna.Trial) -> float:
        """Run the trial as a DVC experiment; its validation figure, or pruned, or failed."""
        import optuna

        self._open_gate()  # the trial exists: this worker's other threads may count it now
        self._refuse_surplus(trial)
        values = {key: suggest(trial, key, dimension) for key, dimension in self.tune.space.items()}
        name = f"{self.tune.study}-{trial.number}"
        trial.set_user_attr("experiment", name)
        context = TrialContext(
            storage=self.url,
            study=self.tune.study,
            number=trial.number,
            trial_id=self._trial_id(trial.number),
            metric=self.tune.metric,
            parent_run_id=self.parent_run_id,
        )
        shown = " ".join(f"{key}={yaml_scalar(value)}" for key, value in values.items())
        log.info("trial %d (%s): %s", trial.number, name, shown)
        started = time.monotonic()
        returncode, log_path = self._run_experiment(name, values, context)
        seconds = time.monotonic() - started
        if returncode != 0:
            pruned_at = self.storage.get_trial(context.trial_id).user_attrs.get(PRUNED_AT_ATTR)
            if pruned_at is not None:
                log.info("trial %d pruned after epoch %d, in %.0f s", trial.number, pruned_at, seconds)
                raise optuna.TrialPruned(f"pruned after epoch {pruned_at}")
            raise TrialFailedError(
                f"trial {trial.number}: `dvc exp run` exited {returncode} after {seconds:.0f} s; its log, "
                f"{log_path}, ends:\n{_tail(log_path)}"
            )
        figures = experiment_figures(self.root, name)
        for key, value in figures.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seconds", round(seconds, 1))
        value = figures[self.tune.metric]
        log.info(
            "trial %d: %s %.4f (test accuracy %.4f) in %.0f s: experiment %s",
            trial.number,
            self.tune.metric,
            value,
            figures.get("test_accuracy", float("nan")),
            seconds,
            name,
        )
        self.ran.append(name)
        return value

    def _trial_id(self, number: int) -> int:
        """The storage's id of the trial, by which the training opens it (Optuna's public storage API)."""
        study_id = self.storage.get_study_id_from_name(self.tune.study)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def _refuse_surplus(self, trial: optuna.Trial) -> None:
        """Run a trial only if fewer than `trials` counted trials come before it: trial numbers are handed
        out by the storage, so two workers asking at once cannot both take the last one."""
        before = [
            t
            for t in self.study.get_trials(deepcopy=False, states=counted_states())
            if t.number < trial.number
        ]
        if len(before) >= self.tune.trials:
            self.stopping = True
            raise BudgetReachedError(
                f"trial {trial.number} not run: the study's {self.tune.trials} trials are taken"
            )

    def _run_experiment(self, name: str, values: dict[str, Any], context: TrialContext) -> tuple[int, Path]:
        """`dvc exp run --temp` (the workspace is left alone, so trials can run side by side), its output
        in the trial's log file."""
        log_path = self.root / LOG_DIR / self.tune.study / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = ["dvc", "exp", "run", "--temp", "--name", name]
        for key, value in values.items():
            command += ["--set-param", f"{key}={yaml_scalar(value)}"]
        with log_path.open("w", encoding="utf-8") as output:
            output.write(" ".join(command) + "\n")
            output.flush()
            finished = subprocess.run(
                command,
                cwd=self.root,
                env=os.environ | context.environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                check=False,
            )
        return finished.returncode, log_path

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna's callback after each trial: count failures in a row (a refused surplus trial ran
        nothing, so it is no failure), and keep the study's MLflow run up to date."""
        from optuna.trial import TrialState

        if trial.state == TrialState.FAIL and "experiment" in trial.user_attrs:
            self.failures_in_a_row += 1
        elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self.failures_in_a_row = 0
        if trial.state == TrialState.PRUNED:
            mark_trial_runs(self.tune.study, trial.number, "KILLED", "PRUNED")
        if self.failures_in_a_row >= FAILURES_IN_A_ROW and not self.stopping:
            log.error(
                "%d trials in a row failed: this worker stops (see their logs above)", FAILURES_IN_A_ROW
            )
            self.stopping = True
        with self.study_run_lock:  # two threads updating one run's tags at once collide in the store
            update_study_run(self.parent_run_id, study, self.tune)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(f"  {line}" for line in text[-lines:])


def experiment_figures(root: Path, name: str) -> dict[str, float]:
    """The experiment's validation figures (metrics/train.json) and test accuracy (metrics/eval.json),
    read from the experiment's commit through DVC, wherever DVC keeps each file."""
    import dvc.api

    train = json.loads(dvc.api.read("metrics/train.json", repo=str(root), rev=name))
    figures = {f"val_{key}": float(value) for key, value in train["val"].items()}
    evaluation = json.loads(dvc.api.read("metrics/eval.json", repo=str(root), rev=name))
    figures["test_accuracy"] = float(evaluation["test"]["accuracy"])
    return figures


# ------------------------------------------------------------------------------------------ MLflow


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
        running = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        if len(done) >= tune.trials and not running:
            client.set_terminated(run_id, "FINISHED")
    except Exception as exc:  # the study goes on; its run catches up after the next trial
        log.warning("could not update the study's MLflow run: %s", store.describe(exc))


def mark_trial_runs(study: str, number: int, status: str, state: str) -> None:
    """End the MLflow run(s) of a trial that no longer runs: pruned (KILLED), or its worker died (FAILED)."""
    import mlflow

    client = mlflow.MlflowClient()  # run_trials has connected to the store
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


def fail_stale_trial_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's callback for a trial whose worker stopped beating: its MLflow run ends FAILED too."""
    log.warning("trial %d's worker stopped answering: the trial is failed, and run again", trial.number)
    mark_trial_runs(study.study_name, trial.number, "FAILED", "FAIL")


# ------------------------------------------------------------------------------------------ the study


def open_study(tune: TuneConfig, url: str, worker: str) -> tuple[optuna.storages.RDBStorage, optuna.Study]:
    """The study, created by the first worker; a worker whose settings differ from the study's is refused."""
    import optuna

    heartbeat = int(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_S))
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    try:
        storage = optuna_storage(
            url,
            heartbeat_interval=heartbeat,
            grace_period=heartbeat * STALE_AFTER_HEARTBEATS,
            heartbeat_stale_trial_callback=fail_stale_trial_run,
        )
        study = optuna.create_study(
            study_name=tune.study,
            storage=storage,
            sampler=optuna.samplers.TPESampler(seed=worker_seed(tune.seed, worker)),
            pruner=make_pruner(tune.pruner),
            direction=tune.direction,
            load_if_exists=True,
        )
    except Exception as exc:
        if isinstance(exc, ValueError | StageError):
            raise
        raise StageError(
            f"the study's storage {store.redact(url)} is not usable: {store.describe(exc)}. Start the "
            f"database (or fix --storage / {STORAGE_ENV}), or leave both unset for the file "
            f"{DEFAULT_STORAGE_FILE}."
        ) from exc
    wanted = study_settings(tune)
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", wanted)
    elif recorded != wanted:
        differing = ", ".join(key for key in wanted if wanted[key] != recorded.get(key))
        raise ConfigError(
            f"study {tune.study!r} in {store.redact(url)} was started with another {differing}: its trials "
            "could not be compared. Give this search another tune.study, or set tune back as it was."
        )
    return storage, study


def worker_seed(seed: int, worker: str) -> int:
    """The sampler's seed: tune.seed for a worker named 0 (one machine: the same suggestions each time);
    mixed with the worker's name otherwise, so that workers of one study do not all suggest the same."""
    if worker == "0":
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{worker}".encode()).digest()[:4], "big")


def counts(study: optuna.Study) -> str:
    """`12 trials: 9 complete, 2 pruned, 1 failed`."""
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    shown = ", ".join(f"{n} {state.replace('fail', 'failed')}" for state, n in sorted(states.items()))
    return f"{sum(states.values())} trials" + (f": {shown}" if shown else "")


def run_trials(root: Path, tune: TuneConfig, url: str, jobs: int, worker: str) -> Worker:
    """Trials until the study has its budget (or this worker's trials keep failing)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial's outcome is logged here, once
    storage, study = open_study(tune, url, worker)
    experiment_id = store.connect()
    parent = study_run(experiment_id, tune)
    runner = Worker(root, tune, url, storage, study, parent)
    remaining = runner.remaining()
    if remaining <= 0:
        log.info("study %s has its %d trials (%s): nothing to run", tune.study, tune.trials, counts(study))
        update_study_run(parent, study, tune)
        return runner
    log.info(
        "study %s: %d of %d trials to go, %d at a time, storage %s",
        tune.study,
        remaining,
        tune.trials,
        min(jobs, remaining),
        store.redact(url),
    )
    threads = [threading.Thread(target=runner.loop, name=f"trials-{n}") for n in range(min(jobs, remaining))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        runner.stopping = True  # the trials under way were interrupted too (one process group): no new ones
        log.warning("interrupted: the trials under way end failed; rerun mnist-tune to go on with the study")
        for thread in threads:
            thread.join()
        raise
    log.info("study %s: %s", tune.study, counts(study))
    if runner.failures_in_a_row >= FAILURES_IN_A_ROW:
        raise StageError(f"{FAILURES_IN_A_ROW} trials in a row failed; fix the cause shown above and rerun")
    return runner


# ------------------------------------------------------------------------------------------ --best


def describe_best(root: Path, tune: TuneConfig, url: str) -> str:
    """The best trial: its params, validation and test figures, experiment, and how to adopt it."""
    import optuna

    try:
        study = optuna.load_study(study_name=tune.study, storage=optuna_storage(url))
    except KeyError as exc:
        raise StageError(f"no study {tune.study!r} in {store.redact(url)}: run `mnist-tune` first") from exc
    try:
        best = study.best_trial
    except ValueError as exc:
        raise StageError(f"study {tune.study!r} has no finished trial yet ({counts(study)})") from exc
    name = best.user_attrs.get("experiment", f"{tune.study}-{best.number}")
    lines = [
        f"study {tune.study}: {counts(study)}",
        f"best: trial {best.number}, {tune.metric} {best.value:.4f}, "
        f"test accuracy {best.user_attrs.get('test_accuracy', float('nan')):.4f}",
        *(f"  {key}: {yaml_scalar(value)}" for key, value in best.params.items()),
        f"DVC experiment: {name}",
    ]
    if not _has_experiment(root, name):
        lines.append(f"  not in this repository yet: dvc exp pull origin {name}")
    lines.append(f"adopt it: dvc exp apply {name}")
    return "\n".join(lines)


def _has_experiment(root: Path, name: str) -> bool:
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=root, capture_output=True, text=True
    ).stdout.split()
    return any(ref.rsplit("/", 1)[-1] == name for ref in refs)


# ------------------------------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("-j", "--jobs", type=int, default=1, help="trials run at once on this machine")
    parser.add_argument(
        "--storage",
        help=f"the study's Optuna storage URL (default: ${STORAGE_ENV}, else {DEFAULT_STORAGE_FILE} at the "
        "repository root), e.g. postgresql://user:password@host/optuna for a team",
    )
    parser.add_argument(
        "--worker",
        default=None,
        help="this worker's name, which seeds its sampler (default: 0 with the embedded file; else the host "
        "and process)",
    )
    parser.add_argument("--best", action="store_true", help="print the best trial and how to adopt it")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: run at least one trial at a time")
    root = store.repository_root()
    params = load_params(root / "params.yaml")
    tune = params.tune
    if not tune.space:
        raise ConfigError("params.yaml's tune.space is empty: list the keys a trial varies (README, Tuning)")
    url = storage_url(args.storage, root)
    if args.best:
        print(describe_best(root, tune, url))
        return
    embedded = url.startswith("sqlite:///")
    worker = args.worker or ("0" if embedded else f"{platform.node()}-{os.getpid()}")
    runner = run_trials(root, tune, url, args.jobs, worker)
    log.info("this worker ran %d trial(s): %s", len(runner.ran), ", ".join(runner.ran) or "none")


def cli() -> None:
    run_stage(main)


if __name__ == "__main__":
    cli()
