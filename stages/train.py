"""train: fit a model preset on the prepared training split, validating on the validation split only.

One MLflow run per trained model: created here, its id written into data/train_run.json for report.
Every finished epoch is checkpointed with its resume state under data/train_state/, so a killed run,
rerun with the same params and data, goes on from its last finished epoch in the same MLflow run.
The test split is only recorded here, as the run's test dataset; evaluate is the stage that uses it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from stages.core import paths, timing
from stages.core.config import Params, load_params
from stages.core.errors import StageError
from stages.core.io import atomic_path, file_digest, load_json, write_json
from stages.core.runner import run_stage
from stages.data.npz import load_npz
from stages.tracking import lineage, store

if TYPE_CHECKING:
    from stages.training.presets import Settings
    from stages.training.state import ResumeState, Rules

log = logging.getLogger(__name__)


def main() -> None:
    # Keras and TensorFlow load here, once the runner filters their C++ start-up lines
    from stages.training import hardware, run
    from stages.training.callbacks import EpochEnd
    from stages.training.presets import PRESETS, Settings, compiled_model
    from stages.training.saving import save_model
    from stages.training.state import Rules, TrainState, best_epoch, write_history

    params = load_params()
    preset = PRESETS[params.train.model]
    settings = Settings.resolve(preset, params.train)
    meta = load_json(paths.prepared_meta(), produced_by="preprocess")
    device, scope = hardware.configure(params.train.mixed_precision)
    experiment_id = store.connect()  # fails in seconds if the store is unusable
    timing.lap("mlflow")
    train = load_npz(paths.prepared_split("train"), ("x", "y"), produced_by="preprocess")
    val = load_npz(paths.prepared_split("val"), ("x", "y"), produced_by="preprocess")
    val = val if len(val["x"]) else None
    test = load_npz(paths.prepared_split("test"), ("x", "label"), produced_by="preprocess")
    rules = Rules(monitor="val_accuracy" if val else "accuracy", patience=settings.early_stopping_patience,
                  plateau=settings.schedule == "plateau")  # fmt: skip
    train_state = TrainState(paths.TRAIN_STATE, run.fingerprint(params, meta["content_sha256"]),
                             keep_best=bool(rules.patience))  # fmt: skip
    timing.lap("load data")

    import mlflow

    run_name = (
        os.environ.get("DVC_EXP_NAME") or f"{preset.name}-{meta['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run_id = run.start(train_state, experiment_id, run_name)
    tags = lineage.lineage_tags(meta["content_sha256"], device) | {"preset": preset.name}
    store.retrying(lambda: mlflow.set_tags(tags), "tagging the MLflow run", patience_s=0)
    store.retrying(lambda: run.log_datasets(meta, {"train": train, "val": val, "test": test}), "logging")
    timing.lap("mlflow")
    try:
        with scope:
            model = compiled_model(preset, meta["dataset"], settings, len(train["x"]), seed=params.seed)
            state = train_state.restore(model)
        _resume_schedule(model, state, rules)
        timing.lap("compute")
        counts = run.parameter_counts(model)
        config = model_config(params, settings, meta)
        logged = dict(lineage.flatten(params.model_dump()))
        logged |= {f"effective.{k}": str(v) for k, v in asdict(settings).items()}
        logged |= {f"model.params.{k}": str(v) for k, v in counts.items()}
        lineage.check_no_secrets(logged)
        run.log_params(run_id, logged)
        store.retrying(lambda: mlflow.log_text(run.layer_summary(model), "model_summary.txt"), "logging")
        store.retrying(lambda: mlflow.log_dict(config, "model_config.json"), "logging")
        timing.lap("mlflow")

        epoch_end = EpochEnd(train_state, state, rules, run_id)
        model.fit(
            train["x"],
            train["y"],
            batch_size=settings.batch_size,
            epochs=state.epoch if state.stopped else settings.epochs,  # early stopping had ended it
            initial_epoch=state.epoch,
            validation_data=None if val is None else (val["x"], val["y"]),
            callbacks=[epoch_end],
            verbose=1 if sys.stdout.isatty() else 2,
        )
        fit_s = timing.lap("fit")
        state = epoch_end.state
        best = best_epoch(state, rules)
        if best is not None and best != state.epoch and not train_state.load_weights(model, best):
            raise StageError(
                f"the checkpoint of the best epoch {best} vanished from {train_state.root}; rerun"
            )
        final = _final_metrics(model, state.history, val, settings.batch_size, counts)
        timings = {
            "train_time_s": round(sum(row["epoch_time_s"] for row in state.history), 2),
            "fit_time_s": round(fit_s, 2),  # model.fit, callbacks included
        }
        timing.lap("compute")
        # the local outputs first: they need no tracking store
        with atomic_path(paths.MODEL_DIR, directory=True) as staging:
            save_model(model, paths.model_file(staging))
            write_json(paths.model_config(staging), config)
        write_json(paths.RUN_RECORD, {"run_id": run_id, "experiment_id": experiment_id,
                                      "model_sha256": file_digest(paths.model_file())})  # fmt: skip
        with atomic_path(paths.TRAIN_HISTORY) as tmp, tmp.open("w", newline="") as fh:
            write_history(fh, state.history)
        write_json(paths.TRAIN_METRICS, final)
        write_json(paths.TIMING_METRICS, timings)  # not a DVC output: the clock must not change dvc.lock
        timing.lap("save outputs")
        example = np.round(test["x"][:2, ..., 0] * 255).astype(np.uint8)  # as a client would send them
        store.retrying(
            lambda: run.complete(run_id, state.history, final | timings, paths.model_file(), example,
                                 meta["class_names"], params.train.registered_model),
            "recording the trained model in MLflow",
        )  # fmt: skip
    except BaseException as exc:
        run.end_quietly("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    store.retrying(lambda: mlflow.end_run("FINISHED"), "closing the MLflow run")
    timing.lap("mlflow")
    train_state.clear()
    log.info("trained %s in %.0f s: %s", preset.name, timings["train_time_s"], final["val"])


def model_config(params: Params, settings: Settings, meta: dict) -> dict:
    """The effective settings a model was trained with, saved beside it and logged to its run."""
    return {
        "preset": params.train.model,
        **asdict(settings),
        "mixed_precision": params.train.mixed_precision,
        "seed": params.seed,
        "dataset": meta["dataset"],
        "data_content_sha256": meta["content_sha256"],
        "splits": meta["splits"],
    }


def _resume_schedule(model, state: ResumeState, rules: Rules) -> None:
    """A resumed run trains on at the rate and with the counters the killed run had reached."""
    if state.epoch == 0:
        return
    if rules.plateau and state.learning_rate is not None:
        model.optimizer.learning_rate = state.learning_rate
    parts = []
    if rules.patience:
        parts.append(f"early stopping (best {rules.monitor} {state.best:.4f} at epoch {state.best_epoch}, "
                     f"waited {state.wait} of {rules.patience})")  # fmt: skip
    if rules.plateau:
        parts.append(f"the plateau schedule (learning rate {state.learning_rate:g}, "
                     f"waited {state.plateau_wait} of {rules.plateau_patience})")  # fmt: skip
    if parts:
        log.info("resumed after epoch %d with %s", state.epoch, " and ".join(parts))


def _final_metrics(model, history, val: dict | None, batch_size: int, counts: dict[str, int]) -> dict:
    """Last epoch's training figures; validation figures of the final (with early stopping: best) weights."""
    if not history:
        raise StageError("training finished no epoch; rerun `dvc repro train`")
    last = history[-1]
    final: dict = {
        "train": {"loss": last["loss"], "accuracy": last["accuracy"]},
        "val": {},
        "epochs": len(history),
        "params": counts,
    }
    if val is not None:
        loss, accuracy = model.evaluate(val["x"], val["y"], batch_size=max(batch_size, 512), verbose=0)
        final["val"] = {"loss": float(loss), "accuracy": float(accuracy)}
    return final


if __name__ == "__main__":
    run_stage(main, tensorflow=True)
