"""train: fit a model preset on the prepared training split, validating on the validation split only.

One MLflow run per trained model: created here, its id written into data/train_run.json for report.
Every finished epoch is checkpointed with its resume state under data/train_state/, so a killed run,
rerun with the same settings, architecture, data and code, goes on from its last finished epoch in the
same MLflow run; checkpoints of any other training are set aside and a new run starts.
Training reads no test image: evaluate is the stage that uses the test split, and report records it in
the run, so a trial of `mnist-tune`, which ends at train, never sees it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.core import paths, timing
from stages.core.config import Params, load_params
from stages.core.errors import StageError
from stages.core.io import atomic_path, file_digest, load_json, write_json
from stages.core.runner import run_stage
from stages.data.npz import load_npz
from stages.tracking import lineage, store, trial

if TYPE_CHECKING:
    import keras

    from stages.training.presets import Preset, Settings
    from stages.training.state import ResumeState, Rules, TrainState

log = logging.getLogger(__name__)


def main() -> None:
    params = load_params()
    with timing.phase("mlflow"):
        experiment_id = store.connect()  # fails in seconds if the store is unusable, before any work
    with timing.phase("load data"):
        job = prepare(params)
    with timing.phase("compute"):
        start = restore(job)
    model, state, checkpoints = start.model, start.state, start.checkpoints
    try:
        with timing.phase("mlflow"):
            run_id = open_run(job, start, experiment_id)
            describe_run(job, model, run_id, state)
        with timing.phase("fit") as fitting:
            state = fit(job, model, checkpoints, state, run_id)
        with timing.phase("compute"):
            final = final_figures(job, model, checkpoints, state)
        with timing.phase("save outputs"):
            timings = write_outputs(job, model, state, final, run_id, fitting.seconds)
        with timing.phase("mlflow"):
            record(job, run_id, state, final | timings)
    except BaseException as exc:
        from stages.training import run
        from stages.training.pruning import PrunedTrialError

        if isinstance(exc, PrunedTrialError):
            checkpoints.clear()  # a pruned training is not one to resume
            run.mark_pruned()
        run.end_quietly("KILLED" if isinstance(exc, KeyboardInterrupt | PrunedTrialError) else "FAILED")
        raise
    checkpoints.clear()
    log.info("trained %s in %.0f s: %s", job.preset.name, timings["train_time_s"], final["val"])


@dataclass(frozen=True)
class Job:
    """Everything one training needs, read and resolved before any MLflow call."""

    params: Params
    preset: Preset
    settings: Settings
    meta: dict[str, Any]
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray] | None
    rules: Rules
    device: str
    scope: AbstractContextManager

    @property
    def config(self) -> dict[str, Any]:
        """The settings in effect, saved beside the model and logged to its run."""
        return {
            "preset": self.params.train.model,
            **asdict(self.settings),
            "mixed_precision": self.params.train.mixed_precision,
            "seed": self.params.seed,
            "dataset": self.meta["dataset"],
            "data_content_sha256": self.meta["content_sha256"],
            "splits": self.meta["splits"],
        }


def prepare(params: Params) -> Job:
    """The preset with params.yaml's overrides resolved, the prepared splits, the device."""
    # Keras and TensorFlow load here, once the runner filters their C++ start-up lines
    from stages.training import hardware
    from stages.training.presets import PRESETS, Settings
    from stages.training.state import Rules

    preset = PRESETS[params.train.model]
    settings = Settings.resolve(preset, params.train)
    meta = load_json(paths.prepared_meta(), produced_by="preprocess")
    device, scope = hardware.configure(params.train.mixed_precision)
    val = load_npz(paths.prepared_split("val"), ("x", "y"), produced_by="preprocess")
    return Job(
        params=params,
        preset=preset,
        settings=settings,
        meta=meta,
        train=load_npz(paths.prepared_split("train"), ("x", "y"), produced_by="preprocess"),
        val=val if len(val["x"]) else None,
        rules=Rules(
            monitor="val_accuracy" if len(val["x"]) else "accuracy",
            patience=settings.early_stopping_patience,
            plateau=settings.schedule == "plateau",
        ),
        device=device,
        scope=scope,
    )


@dataclass(frozen=True)
class Start:
    """Where a training starts: the compiled model and its ResumeState, the checkpoints, the MLflow run to
    resume (None: a new one) and an earlier run whose checkpoints were set aside (to mark killed)."""

    model: keras.Model
    state: ResumeState
    checkpoints: TrainState
    resumed_run: str | None
    stale_run: str | None


def restore(job: Job) -> Start:
    """The compiled model, from this training's newest checkpoint or afresh (`run.resume_or_start`)."""
    from stages.training import run
    from stages.training.fingerprint import fingerprint
    from stages.training.presets import compiled_model
    from stages.training.saving import architecture
    from stages.training.state import TrainState

    def build() -> keras.Model:
        with job.scope:
            return compiled_model(
                job.preset, job.meta["dataset"], job.settings, len(job.train["x"]), seed=job.params.seed
            )

    model = build()
    parts = fingerprint(job.config, architecture(model), job.meta)
    checkpoints = TrainState(paths.TRAIN_STATE, parts, keep_best=bool(job.rules.patience))
    model, state, resumed, stale = run.resume_or_start(checkpoints, model, rebuild=build)
    _resume_schedule(model, state, job.rules)
    return Start(model, state, checkpoints, resumed, stale)


def kept(state: ResumeState) -> str:
    """What a tracking store that stops answering costs, as true as it is at this point of the run."""
    if state.epoch == 0:
        return "No epoch had finished, so no training is lost."
    if not paths.checkpoints_outlive_the_run():
        return f"{paths.TEMPORARY_COPY}: its {state.epoch} finished epoch(s) go with it; a rerun starts over."
    return (
        f"Nothing is lost: the {state.epoch} finished epoch(s) are kept in {paths.TRAIN_STATE}, and a rerun "
        "resumes from them and sends what MLflow is missing."
    )


def open_run(job: Job, start: Start, experiment_id: str) -> str:
    """The MLflow run of this training, resumed or new, recorded with the checkpoints."""
    from stages.training import run

    default_name = f"{job.preset.name}-{job.meta['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_name = os.environ.get("DVC_EXP_NAME") or default_name
    run_id = run.open_run(experiment_id, run_name, start.resumed_run, start.stale_run, kept(start.state))
    start.checkpoints.start(run_id)
    return run_id


def describe_run(job: Job, model: keras.Model, run_id: str, state: ResumeState) -> None:
    """Lineage tags, the splits as datasets, params (flattened, the settings in effect, the parameter
    counts), the layer summary and the model config: all an MLflow user compares runs by."""
    import mlflow

    from stages.training import hardware, run

    counts = run.parameter_counts(model)
    pipeline_params = job.params.model_dump(exclude={"tune"})  # a search's settings train nothing
    logged = dict(lineage.flatten(pipeline_params))
    logged |= {f"effective.{k}": str(v) for k, v in asdict(job.settings).items()}
    logged |= {f"model.params.{k}": str(v) for k, v in counts.items()}
    lineage.check_no_secrets(pipeline_params)
    lineage.check_no_secrets(logged)
    tags = lineage.lineage_tags(job.meta["content_sha256"], job.device) | {"preset": job.preset.name}
    splits = {"train": job.train, "val": job.val}
    saved = kept(state)
    store.retrying(lambda: mlflow.set_tags(tags), "tagging the MLflow run", kept=saved)
    store.retrying(lambda: run.log_datasets(job.meta, splits), "logging the datasets", kept=saved)
    run.log_params(run_id, logged, kept=saved)
    summary = run.layer_summary(model)
    store.retrying(lambda: mlflow.log_text(summary, "model_summary.txt"), "logging the summary", kept=saved)
    store.retrying(lambda: mlflow.log_dict(job.config, "model_config.json"), "logging the config", kept=saved)
    machine = hardware.machine_record()  # what the bytes depend on (data/machine.json has the same)
    store.retrying(lambda: mlflow.log_dict(machine, "machine.json"), "logging the machine", kept=saved)


def fit(
    job: Job, model: keras.Model, checkpoints: TrainState, state: ResumeState, run_id: str
) -> ResumeState:
    """Train the remaining epochs, each checkpointed and sent to MLflow; the state after the last."""
    from stages.training.callbacks import EpochEnd

    epoch_end = EpochEnd(checkpoints, state, job.rules, run_id)
    to_study = None
    if (context := trial.from_environment()) is not None:  # a trial of `mnist-tune`: it may be pruned
        from stages.training.pruning import ReportToStudy

        to_study = ReportToStudy(context, job.params.tune.pruner)
    model.fit(
        job.train["x"],
        job.train["y"],
        batch_size=job.settings.batch_size,
        epochs=state.epoch if state.stopped else job.settings.epochs,  # early stopping had ended it
        initial_epoch=state.epoch,
        validation_data=None if job.val is None else (job.val["x"], job.val["y"]),
        callbacks=[epoch_end] if to_study is None else [epoch_end, to_study],
        verbose=1 if sys.stdout.isatty() else 2,
    )
    if to_study is not None:
        to_study.raise_if_pruned()
    return epoch_end.state


def final_figures(job: Job, model: keras.Model, checkpoints: TrainState, state: ResumeState) -> dict:
    """The figures the run ends with: the last epoch's training figures, the validation figures of the
    final weights (with early stopping: the best epoch's, loaded back; batch norm settled on them), the
    epochs and parameter counts."""
    from stages.training import run
    from stages.training.batch_norm import settle_batch_norm
    from stages.training.state import best_epoch

    best = best_epoch(state, job.rules)
    if best is not None and best != state.epoch and not checkpoints.load_weights(model, best):
        raise StageError(f"the checkpoint of the best epoch {best} vanished from {checkpoints.root}; rerun")
    settle_batch_norm(model, job.train["x"])  # a short training's moving averages are still its first ones
    if not state.history:
        raise StageError("training finished no epoch; rerun `dvc repro train`")
    last = state.history[-1]
    final: dict = {
        "train": {"loss": last["loss"], "accuracy": last["accuracy"]},
        "val": {},
        "epochs": len(state.history),
        "params": run.parameter_counts(model),
        "trained_from": trained_from(job, checkpoints),
    }
    if job.val is not None:
        batch_size = max(job.settings.batch_size, 512)
        loss, accuracy = model.evaluate(job.val["x"], job.val["y"], batch_size=batch_size, verbose=0)
        final["val"] = {"loss": float(loss), "accuracy": float(accuracy)}
    return final


def trained_from(job: Job, checkpoints: TrainState) -> dict[str, str]:
    """What this training was made from, as hashes: its fingerprint's four parts, and train's params as
    written (`learning_rate: null` and `0.003` train alike, but DVC reruns train for either). They change
    exactly when DVC reruns train, and only then, so report, which depends on metrics/train.json, records
    every new MLflow run train makes, even when the model bytes (and so evaluate) did not change."""
    from stages.training.fingerprint import digest

    written = job.params.train.model_dump(exclude={"registered_model"}) | {"seed": job.params.seed}
    return dict(checkpoints.fingerprint) | {"params": digest(written)}


def write_outputs(
    job: Job, model: keras.Model, state: ResumeState, final: dict, run_id: str, fit_s: float
) -> dict[str, float]:
    """The local outputs, each atomically, before MLflow hears of them: they need no tracking store.
    Returns the wall times, which go to metrics/timing.json (not a DVC output: the clock must not change
    dvc.lock)."""
    from stages.training import hardware
    from stages.training.saving import save_model
    from stages.training.state import write_history

    timings = {
        "train_time_s": round(sum(row["epoch_time_s"] for row in state.history), 2),
        "fit_time_s": round(fit_s, 2),  # model.fit, callbacks included
    }
    save_model(model, paths.model_file())
    write_json(paths.model_config(), job.config)
    write_json(paths.RUN_RECORD, {"run_id": run_id, "model_sha256": file_digest(paths.model_file())})
    with atomic_path(paths.TRAIN_HISTORY) as tmp, tmp.open("w", newline="") as fh:
        write_history(fh, state.history)
    write_json(paths.TRAIN_METRICS, final)
    write_json(paths.VAL_METRICS, {"val": final["val"]})
    write_json(paths.TIMING_METRICS, timings)
    write_json(paths.MACHINE_RECORD, hardware.machine_record())
    return timings


def record(job: Job, run_id: str, state: ResumeState, figures: dict) -> None:
    """Everything MLflow should hold of the finished training (epochs it missed, final figures), then the
    run closed as FINISHED. The logged model and its registered version come after, from package and
    report: a trial of `mnist-tune` ends here, a training and no release."""
    import mlflow

    from stages.training import run

    def complete() -> None:
        run.complete(run_id, state.history, figures, paths.model_file())

    store.retrying(complete, "recording the trained model in MLflow", kept=kept(state))
    store.retrying(lambda: mlflow.end_run("FINISHED"), "closing the MLflow run", kept=kept(state))


def _resume_schedule(model: keras.Model, state: ResumeState, rules: Rules) -> None:
    """A resumed run trains on at the rate and with the counters the killed run had reached."""
    if state.epoch == 0:
        return
    if rules.plateau and state.learning_rate is not None:
        model.optimizer.learning_rate = state.learning_rate
    parts = []
    if rules.patience:
        parts.append(
            f"early stopping (best {rules.monitor} {state.best:.4f} at epoch {state.best_epoch}, "
            f"waited {state.wait} of {rules.patience})"
        )
    if rules.plateau:
        parts.append(
            f"the plateau schedule (learning rate {state.learning_rate:g}, "
            f"waited {state.plateau_wait} of {rules.plateau_patience})"
        )
    if parts:
        log.info("resumed after epoch %d with %s", state.epoch, " and ".join(parts))


if __name__ == "__main__":
    run_stage(main, tensorflow=True)
