"""report: one page that says what was trained, on what, how well, and how it compares.

Writes `metrics/report.md` (git-tracked, short enough to post as a CI comment; its images are the PNGs
beside it) and `data/report/report.html`, the same content as one self-contained file (images embedded),
and logs both into the run's MLflow record. The comparison table reads earlier runs of the experiment and
the current champion from MLflow. The run's model is registered under `train.registered_model` if it is
not yet (that name changes no training, so renaming it reruns only this stage).
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pandas as pd

from stages.core import paths, timing
from stages.core.config import load_params
from stages.core.errors import StageError
from stages.core.io import atomic_path, load_json
from stages.core.runner import run_stage
from stages.reporting.render import render, save_training_curves, to_html
from stages.tracking import queries, registry, store

log = logging.getLogger(__name__)


def _embedded(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _beside_report(path: Path) -> str:
    return path.relative_to(paths.REPORT_MD.parent).as_posix()


def main() -> None:
    params = load_params()
    meta = load_json(paths.prepared_meta(), produced_by="preprocess")
    figures = {
        "meta": meta,
        "provenance": load_json(paths.provenance(meta["dataset"]), produced_by="download"),
        "train": load_json(paths.TRAIN_METRICS, produced_by="train"),
        "eval": load_json(paths.EVAL_METRICS, produced_by="evaluate"),
    }
    run_id = load_json(paths.run_record(), produced_by="train")["run_id"]
    for png in (paths.CONFUSION_PNG, paths.MISCLASSIFIED_PNG):
        if not png.exists():
            raise StageError(f"{png} is missing: rerun `dvc repro evaluate`")
    try:
        history = pd.read_csv(paths.TRAIN_HISTORY)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise StageError(f"{paths.TRAIN_HISTORY} is unreadable ({exc}): rerun `dvc repro train`") from exc

    timing.lap("load data")
    store.connect()
    import mlflow

    run = mlflow.MlflowClient().get_run(run_id)
    registry.register(run_id, params.train.registered_model)
    champion = queries.champion_run_id(params.train.registered_model, params.promote.alias)
    earlier = queries.search(limit=params.report.compare_runs)
    shown = set(earlier["run_id"]) if not earlier.empty else set()
    missing = [r for r in dict.fromkeys((run_id, champion[1])) if r and r not in shown]
    if missing:  # this run and the champion always appear, however old
        earlier = pd.concat([queries.search(run_ids=missing, limit=0), earlier], ignore_index=True)
    marks = {run_id: "this run"}
    if champion[1]:
        marks[champion[1]] = "this run, champion" if champion[1] == run_id else "champion"
    comparison = queries.comparison(earlier, marks)
    timing.lap("mlflow")

    save_training_curves(history, paths.TRAIN_CURVES_PNG)
    timing.lap("compute")
    title = f"{params.train.model} on {meta['dataset']}"
    with atomic_path(paths.REPORT_MD) as tmp:
        tmp.write_text(render(params, run, figures, comparison, champion, _beside_report), encoding="utf-8")
    page = to_html(render(params, run, figures, comparison, champion, _embedded), title)
    with atomic_path(paths.REPORT_DIR, directory=True) as staging:
        (staging / paths.REPORT_HTML.name).write_text(page, encoding="utf-8")
    timing.lap("save outputs")

    with mlflow.start_run(run_id=run_id):
        for path in (paths.REPORT_MD, paths.TRAIN_CURVES_PNG, paths.REPORT_HTML):
            mlflow.log_artifact(str(path), artifact_path="report")
    timing.lap("mlflow")
    log.info("report: %s and %s", paths.REPORT_MD, paths.REPORT_HTML)


if __name__ == "__main__":
    run_stage(main)
