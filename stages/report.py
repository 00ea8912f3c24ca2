"""report: one page that says what was trained, on what, how well, and how it compares.

Writes `data/report/report.md` (short enough to post as a CI comment) and `data/report/report.html`,
the same content as one self-contained file (images embedded). The comparison table reads earlier runs
of the experiment and the current champion from MLflow.

It also brings the training run in MLflow up to date with the outputs: the evaluation (evaluate's files
and figures, linked to the logged model and test dataset), the report, and the registered version under
`train.registered_model`. DVC runs it after every training, since metrics/train.json says what train was
made from: even when the model came out byte for byte the same, and evaluate is skipped, the new MLflow run
gets the evaluation of those bytes. The pages name the run, so they are no DVC output (dvc.lock must not
change with a run id); `data/report/summary.json`, the same for the same inputs, is, so a fresh clone,
which lacks it, completes its first run too. A repro with nothing new runs nothing.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.core import paths, timing
from stages.core.config import Params, load_params
from stages.core.errors import StageError
from stages.core.io import atomic_path, load_json, write_json
from stages.core.runner import run_stage
from stages.data.npz import load_npz
from stages.evaluation.figures import save_image_grid
from stages.evaluation.paired import Predictions, accuracy_interval, paired_test, verdict
from stages.reporting.render import ChampionComparison, render, save_training_curves, to_html
from stages.tracking import lineage, predictions, queries, record, registry, store

log = logging.getLogger(__name__)

REPORT_IMAGES = (paths.TRAIN_CURVES_PNG, paths.FIXED_PNG, paths.BROKEN_PNG)  # drawn here, beside the pages
SHOWN_PER_GRID = 12  # images of fixes, and of breaks, in the comparison with the champion


def _timings() -> dict:
    """Wall times, if train wrote them here (a checkout of another run's outputs brings none)."""
    return load_json(paths.TIMING_METRICS, produced_by="train") if paths.TIMING_METRICS.exists() else {}


def _embedded(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _beside_report(path: Path) -> str:
    return os.path.relpath(path, paths.REPORT_MD.parent)


def compare_with_champion(params: Params, run, champion: Any | None) -> ChampionComparison | None:
    """This run's test predictions paired with the champion's (a `ModelVersion`), judged by
    `mnist-promote`'s rule; None where there is no champion or this run's model is it. A comparison that
    cannot be made says why instead."""
    import mlflow

    if champion is None or champion.run_id == run.info.run_id:
        return None
    client = mlflow.MlflowClient()
    compared = ChampionComparison(version=champion.version, run_id=champion.run_id)
    dataset = client.get_run(champion.run_id).data.params.get("data.dataset")
    if dataset != run.data.params.get("data.dataset"):
        return compared.refused(
            f"it was trained on {dataset}, this run on {run.data.params.get('data.dataset')}"
        )
    try:  # the section is the report's extra: a champion that cannot be compared is said, not fatal
        found = predictions.of_version(champion)
        mine = Predictions.load(paths.PREDICTIONS)
        test = paired_test(mine, found.predictions)
    except StageError as exc:
        return compared.refused(str(exc))
    rule = verdict(test, params.promote.alpha, params.promote.margin)
    how = found.how(f"version {champion.version}")
    return compared.judged(test, rule, mine, found.predictions.predicted, how)


def save_paired_images(compared: ChampionComparison, class_names: list[str], staging: Path) -> None:
    """The first images this run fixes and breaks, each with what the champion answered."""
    test = load_npz(paths.prepared_split("test"), ("x", "label"), produced_by="preprocess")
    mine, theirs = compared.predictions, compared.champion_predicted
    for indices, what, dest in (
        (compared.test.fixed, "fixes {} of version {}'s mistakes", paths.FIXED_PNG),
        (compared.test.broken, "breaks {} of version {}'s right answers", paths.BROKEN_PNG),
    ):
        shown = indices[:SHOWN_PER_GRID]
        if not len(shown):
            continue
        captions = [
            f"#{i}: {class_names[mine.label[i]]}\nnow {class_names[mine.predicted[i]]}, "
            f"was {class_names[theirs[i]]}"
            for i in shown
        ]
        title = f"This run {what.format(len(indices), compared.version)} ({len(shown)} shown)"
        save_image_grid(test["x"], np.asarray(shown), captions, title, staging / dest.name)


def interval(test: dict, images: int) -> dict[str, float]:
    """The test accuracy's 95% Wilson interval, for the report, mnist-runs and the MLflow run (not in
    eval.json, whose every column `dvc metrics show` prints)."""
    low, high = accuracy_interval(images - int(test["errors"]), images)
    return {"accuracy_ci95_low": low, "accuracy_ci95_high": high}


def summary(params: Params, figures: dict) -> dict:
    """The report's headline, from its inputs only (no run id, no MLflow): the same for the same inputs."""
    return {
        "preset": params.train.model,
        "dataset": figures["meta"]["dataset"],
        "registered_model": params.train.registered_model,
        "test": figures["eval"]["test"],
        "val": figures["train"]["val"],
        "epochs": figures["train"]["epochs"],
        "params": figures["train"]["params"],
    }


def main() -> None:
    params = load_params()
    meta = load_json(paths.prepared_meta(), produced_by="preprocess")
    figures = {
        "meta": meta,
        "provenance": load_json(paths.provenance(meta["dataset"]), produced_by="download"),
        "train": load_json(paths.TRAIN_METRICS, produced_by="train"),
        "timing": _timings(),
        "eval": load_json(paths.EVAL_METRICS, produced_by="evaluate"),
    }
    try:
        per_class = pd.read_csv(paths.PER_CLASS, index_col="class", dtype={"class": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise StageError(f"{paths.PER_CLASS} is unreadable ({exc}): rerun `dvc repro evaluate`") from exc
    figures["eval"]["per_class"] = per_class.to_dict(orient="index")
    figures["eval"]["test"] |= interval(figures["eval"]["test"], int(per_class["support"].sum()))
    for png in (paths.CONFUSION_PNG, paths.MISCLASSIFIED_PNG):
        if not png.exists():
            raise StageError(f"{png} is missing: rerun `dvc repro evaluate`")
    try:
        history = pd.read_csv(paths.TRAIN_HISTORY)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise StageError(f"{paths.TRAIN_HISTORY} is unreadable ({exc}): rerun `dvc repro train`") from exc

    timing.lap("load data")
    store.connect()
    run_id = queries.model_run_id()
    import mlflow

    model = registry.logged_model(run_id)
    test_dataset = lineage.split_dataset(meta, "test", str(paths.prepared_split("test")))
    evaluation = [
        paths.EVAL_METRICS,
        paths.PER_CLASS,
        paths.CONFUSION_PNG,
        paths.MISCLASSIFIED_PNG,
        paths.PREDICTIONS,
    ]
    record.evaluation(
        run_id,
        figures["eval"]["test"],
        per_class,
        evaluation,
        model.model_id if model else None,
        test_dataset,
    )
    registry.register(run_id, params.train.registered_model)
    run = mlflow.MlflowClient().get_run(run_id)
    champion = queries.champion_version(params.train.registered_model, params.promote.alias)
    champion_run = champion.run_id if champion else None
    earlier = queries.search(limit=params.report.compare_runs)
    shown = set(earlier["run_id"]) if not earlier.empty else set()
    missing = [r for r in dict.fromkeys((run_id, champion_run)) if r and r not in shown]
    if missing:  # this run and the champion always appear, however old
        earlier = pd.concat([queries.search(run_ids=missing, limit=0), earlier], ignore_index=True)
    marks = {run_id: "this run"}
    if champion_run:
        marks[champion_run] = "this run, champion" if champion_run == run_id else "champion"
    comparison = queries.comparison(earlier, marks)
    compared = compare_with_champion(params, run, champion)
    timing.lap("mlflow")

    title = f"{params.train.model} on {meta['dataset']}"
    with atomic_path(paths.REPORT_DIR, directory=True) as staging:
        save_training_curves(history, staging / paths.TRAIN_CURVES_PNG.name)
        if compared and compared.test:
            save_paired_images(compared, meta["class_names"], staging)
        timing.lap("compute")
        in_staging = {png: staging / png.name for png in REPORT_IMAGES}
        markdown = render(params, run, figures, comparison, champion, compared, _beside_report)
        page = render(
            params, run, figures, comparison, champion, compared, lambda p: _embedded(in_staging.get(p, p))
        )
        (staging / paths.REPORT_MD.name).write_text(markdown, encoding="utf-8")
        (staging / paths.REPORT_HTML.name).write_text(to_html(page, title), encoding="utf-8")
        write_json(staging / paths.REPORT_SUMMARY.name, summary(params, figures))
    timing.lap("save outputs")

    pages = [paths.REPORT_MD, paths.REPORT_HTML, *(png for png in REPORT_IMAGES if png.exists())]
    record.report(run_id, pages)
    timing.lap("mlflow")
    log.info("report: %s and %s", paths.REPORT_MD, paths.REPORT_HTML)


if __name__ == "__main__":
    run_stage(main, tensorflow=True)  # LiteRT greets when a champion's predictions are computed
