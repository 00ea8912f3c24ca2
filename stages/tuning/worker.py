"""One `mnist-tune` worker: trials until the study has its budget, beside any number of other workers.

Optuna's own machinery does the bookkeeping: `study.optimize` runs the trials (`-j` at once), keeps each
one's heartbeat, and fails the trials of dead workers (`fail_stale_trials`), whose params
`RetryHeartbeatStaleTrialCallback` queues to run again; `MaxTrialsCallback` stops asking for trials once
the budget is taken. What Optuna leaves to its user is done here, once:

- a worker fails dead workers' trials first, then counts: started at any time, alone or beside others,
  it works until the budget is met, waiting while the last trials run elsewhere;
- the budget is exact: a trial asked for at the very moment another worker took the last one is refused
  before it trains (it ends FAIL, marked `surplus`; trial numbers come from the storage, so two workers
  cannot both take the last one);
- any trial that fails stops this worker, which exits non-zero naming the trial and the cause.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.core.config import Choice, FloatRange, IntRange, TuneConfig
from stages.core.errors import StageError
from stages.tracking import store
from stages.tracking.trial import PRUNED_AT_ATTR, TrialContext
from stages.tuning import experiments, study, tracking

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

SURPLUS_ATTR = "surplus"  # on a trial refused because the budget was taken: it ran nothing
EXPERIMENT_ATTR = "experiment"
STORAGE_REFUSALS = 5  # refused storage calls in a row before a worker gives up


class TrialFailedError(StageError):
    """A trial failed (not pruned): Optuna records it as FAIL, and this worker stops."""


class SurplusTrialError(Exception):
    """Another worker took the study's last trial at the same moment: this one runs nothing."""


def counted_states() -> tuple:
    """The trials that use up the budget: finished, pruned, or under way. Failed ones are run again."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def suggest(trial: optuna.Trial, key: str, dimension: FloatRange | IntRange | Choice) -> Any:
    """The trial's value for one key of the space (Optuna remembers it under that key; a trial run again
    for a dead worker's gets that trial's value)."""
    if isinstance(dimension, FloatRange):
        return trial.suggest_float(key, dimension.low, dimension.high, log=dimension.log)
    if isinstance(dimension, IntRange):
        return trial.suggest_int(key, dimension.low, dimension.high, step=dimension.step, log=dimension.log)
    return trial.suggest_categorical(key, dimension.choices)


@dataclass
class Tally:
    done: int  # complete or pruned
    running: int

    @classmethod
    def of(cls, trials: list) -> Tally:
        from optuna.trial import TrialState

        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        return cls(done, sum(t.state == TrialState.RUNNING for t in trials))


@dataclass
class Worker:
    """One `mnist-tune` process: its study, its MLflow parent run, and the trials it ran."""

    root: Path
    tune: TuneConfig
    url: str
    storage: optuna.storages.RDBStorage
    study: optuna.Study
    prefix: str
    parent_run_id: str
    jobs: int = 1
    storage_refusals: int = 0
    ran: list[str] = field(default_factory=list)
    study_run_lock: threading.Lock = field(default_factory=threading.Lock)

    def work(self) -> None:
        """Trials until the study has its budget: dead workers' trials failed (and queued again) first."""
        from optuna.study import MaxTrialsCallback

        waiting = False  # said once per wait
        while True:
            tally = self.tally()
            if tally is None:
                continue
            if tally.done >= self.tune.trials:
                break
            room = self.tune.trials - tally.done - tally.running
            if room <= 0:  # the last trials run elsewhere: they finish, or their worker's heartbeat stops
                if not waiting:
                    waiting = True
                    log.info(
                        "%d trial(s) of the budget run on other workers: waiting for them", tally.running
                    )
                time.sleep(min(study.heartbeat_s(), 10))
                continue
            waiting = False
            log.info(
                "study %s: %d of %d trials to go, %d at a time",
                self.tune.study,
                self.tune.trials - tally.done,
                self.tune.trials,
                min(self.jobs, room),
            )
            self.study.optimize(
                self.objective,
                n_jobs=min(self.jobs, room),
                catch=(SurplusTrialError,),
                callbacks=[MaxTrialsCallback(self.tune.trials, states=counted_states()), self.after_trial],
                gc_after_trial=False,
            )

    def tally(self) -> Tally | None:
        """The study's count once dead workers' trials are failed (`tidy`), or None after a refusal by the
        storage that a moment's wait may cure: workers finishing trials at once on a server have made its
        commits fail (seen once among four on PostgreSQL). Several in a row stop the worker."""
        import optuna

        try:
            self.tidy()
            tally = Tally.of(self.study.get_trials(deepcopy=False))
        except optuna.exceptions.StorageInternalError as exc:
            self.storage_refusals += 1
            if self.storage_refusals >= STORAGE_REFUSALS:
                raise
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            log.warning("the study's storage refused (%s); trying again", store.describe(cause))
            time.sleep(random.uniform(1, 3))
            return None
        self.storage_refusals = 0
        return tally

    def tidy(self) -> None:
        """Fail the trials of dead workers (Optuna's heartbeat check: their params are queued again), and
        remove what their experiments left in this repository."""
        import optuna
        from optuna.trial import TrialState

        optuna.storages.fail_stale_trials(self.study)
        dead = {
            t.user_attrs[EXPERIMENT_ATTR]
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if EXPERIMENT_ATTR in t.user_attrs
        }
        experiments.remove_leftovers(self.root, dead)

    # ------------------------------------------------------------------------------------------ a trial

    def objective(self, trial: optuna.Trial) -> float:
        """Run the trial as a DVC experiment up to train; its validation figure, or pruned, or failed."""
        import optuna

        self._refuse_surplus(trial)
        name = f"{self.prefix}-{trial.number}"
        try:
            values = {key: suggest(trial, key, dimension) for key, dimension in self.tune.space.items()}
            trial.set_user_attr(EXPERIMENT_ATTR, name)
            context = TrialContext(
                storage=self.url,
                study=self.tune.study,
                number=trial.number,
                trial_id=self._trial_id(trial.number),
                metric=self.tune.metric,
                parent_run_id=self.parent_run_id,
            )
            retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(
                self.storage.get_trial(context.trial_id)
            )
            shown = " ".join(f"{key}={experiments.yaml_scalar(value)}" for key, value in values.items())
            again = f", trial {retried}'s again (its worker died)" if retried is not None else ""
            log.info("trial %d (%s): %s%s", trial.number, name, shown, again)
            started = time.monotonic()
            returncode, log_path = experiments.run_experiment(
                self.root, self.tune.study, name, values, context.environment()
            )
            seconds = time.monotonic() - started
            if returncode != 0:
                pruned_at = self.storage.get_trial(context.trial_id).user_attrs.get(PRUNED_AT_ATTR)
                if pruned_at is not None:
                    log.info("trial %d pruned after epoch %d, in %.0f s", trial.number, pruned_at, seconds)
                    raise optuna.TrialPruned(f"pruned after epoch {pruned_at}")
                raise TrialFailedError(
                    f"trial {trial.number} ({name}) failed: {experiments.failure_reason(log_path)} "
                    f"(`dvc exp run` exited {returncode} after {seconds:.0f} s). Its log, {log_path}, "
                    f"ends:\n{experiments.tail(log_path)}"
                )
            figures = experiments.validation_figures(self.root, name)
            if self.tune.metric not in figures:
                raise TrialFailedError(
                    f"trial {trial.number} ({name}) logged no {self.tune.metric} (it has "
                    f"{', '.join(figures) or 'no validation figure'})"
                )
        except (optuna.TrialPruned, TrialFailedError):
            raise
        except Exception as exc:
            raise TrialFailedError(
                f"trial {trial.number} ({name}) failed: {type(exc).__name__}: {store.describe(exc)}"
            ) from exc
        for key, value in figures.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seconds", round(seconds, 1))
        value = figures[self.tune.metric]
        log.info(
            "trial %d: %s %.4f in %.0f s: experiment %s", trial.number, self.tune.metric, value, seconds, name
        )
        self.ran.append(name)
        return value

    def _trial_id(self, number: int) -> int:
        """The storage's id of the trial, by which its training opens it (Optuna's public storage API)."""
        return self.storage.get_trial_id_from_study_id_trial_number(
            self.storage.get_study_id_from_name(self.tune.study), number
        )

    def _refuse_surplus(self, trial: optuna.Trial) -> None:
        """Run a trial only if fewer than `trials` counted trials come before it."""
        before = [
            t
            for t in self.study.get_trials(deepcopy=False, states=counted_states())
            if t.number < trial.number
        ]
        if len(before) >= self.tune.trials:
            trial.set_user_attr(SURPLUS_ATTR, True)
            self.study.stop()
            raise SurplusTrialError(
                f"trial {trial.number} not run: the study's {self.tune.trials} trials are taken"
            )

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna's callback after each trial: a pruned trial's run ends KILLED, and the study's MLflow run
        is brought up to date."""
        from optuna.trial import TrialState

        if trial.state == TrialState.PRUNED:
            tracking.mark_trial_runs(self.tune.study, trial.number, "KILLED", "PRUNED")
        with self.study_run_lock:  # two threads updating one run's tags at once collide in the store
            tracking.update_study_run(self.parent_run_id, study, self.tune)


class StaleTrials:
    """The storage's callback for a trial whose worker stopped beating: Optuna's retry queues its params
    to run again, and its MLflow run ends FAILED."""

    def __init__(self) -> None:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # twice at most: params whose training kills its worker (out of memory) would kill every one
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.warning(
            "trial %d's worker stopped answering: the trial is failed, and its params run again", trial.number
        )
        self.retry(study, trial)
        tracking.mark_trial_runs(study.study_name, trial.number, "FAILED", "FAIL")
