"""report: one page that says what was trained, on what, how well, and how it compares.

Writes `metrics/report.md` (git-tracked, short enough to post as a CI comment; its images are the PNGs
beside it) and `data/report/report.html`, the same content as one self-contained file (images embedded),
and logs both into the run's MLflow record. The comparison table reads earlier runs of the experiment and
the current champion from MLflow with pandas.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import markdown
import matplotlib.pyplot as plt
import pandas as pd

from stages import paths, runs, timing, tracking
from stages.config import Params, load_params
from stages.errors import StageError, run_stage
from stages.io import atomic_path, load_json

log = logging.getLogger(__name__)

HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def save_training_curves(history: pd.DataFrame, dest: Path) -> None:
    """Accuracy and loss per epoch, training beside validation."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for ax, metric in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        ax.plot(history["epoch"], history[metric], marker="o", label="train")
        if f"val_{metric}" in history and history[f"val_{metric}"].notna().any():
            ax.plot(history["epoch"], history[f"val_{metric}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _table(frame: pd.DataFrame, index: bool = False) -> str:
    return frame.to_markdown(index=index, floatfmt=".4f") if not frame.empty else "(none)"


def render(
    params: Params,
    run: Any,
    figures: dict[str, Any],
    comparison: pd.DataFrame,
    champion: tuple[str | None, str | None],
    image: Callable[[Path], str],
) -> str:
    """The report as Markdown; `image` turns a PNG path into the link the output format needs."""
    train, evaluation, meta, provenance = (figures[k] for k in ("train", "eval", "meta", "provenance"))
    test = evaluation["test"]
    tags, logged = run.data.tags, run.data.params
    commit = tags.get("git.commit", "unknown")[:12]
    dirty = " (with uncommitted changes)" if tags.get("git.dirty") == "true" else ""
    preset = params.train.model
    val = train.get("val") or {}
    result = pd.DataFrame(
        [
            {
                "test accuracy": f"{100 * test['accuracy']:.2f}%",
                "test errors": test["errors"],
                "test loss": f"{test['loss']:.4f}",
                "macro F1": f"{test['macro_f1']:.4f}",
                "val accuracy": f"{100 * val['accuracy']:.2f}%" if val else "",
                "epochs": train["epochs"],
                "train time": f"{train['train_time_s']:.0f} s",
            }
        ]
    )
    settings = {k.removeprefix("effective."): v for k, v in logged.items() if k.startswith("effective.")}
    counts = train["params"]
    per_class = pd.DataFrame.from_dict(evaluation["per_class"], orient="index").rename_axis("class")
    version, champion_run = champion
    if version is None:
        champion_line = f"No model carries the `{params.promote.alias}` alias yet (`mnist-promote` sets it)."
    elif champion_run == run.info.run_id:
        champion_line = f"This run's model is the `{params.promote.alias}` (version {version})."
    else:
        champion_line = (
            f"The `{params.promote.alias}` is version {version} of `{params.train.registered_model}` "
            f"(run `{champion_run[:8]}`)."
        )
    experiment = tags.get("dvc.experiment", "")
    splits = ", ".join(f"{name} {count:,}" for name, count in meta["splits"].items())
    return f"""# {preset} on {meta["dataset"]}: {100 * test["accuracy"]:.2f}% test accuracy

MLflow run `{run.info.run_id}` · commit `{commit}`{dirty} · DVC experiment `{experiment}` ·
{tags.get("device", "")} · Keras {tags.get("version.keras", "")} on {tags.get("keras.backend", "")}

## Result

{_table(result)}

## Data

- **{meta["dataset"]}** from source `{provenance["source"]}` ({provenance["location"]}), retrieved
  {provenance.get("retrieved_at", "unknown")}
- content SHA-256 `{meta["content_sha256"]}`
- splits: {splits} (seed {meta["seed"]})

## Model

- preset **{preset}**, registered as `{params.train.registered_model}`
- parameters: {counts["total"]:,} in all, {counts["trainable"]:,} trainable, {counts["non_trainable"]:,} not
- training: {", ".join(f"{k} {v}" for k, v in sorted(settings.items()))}

## Training curves

![training curves]({image(paths.TRAIN_CURVES_PNG)})

## Test results per class

{_table(per_class, index=True)}

![confusion matrix]({image(paths.CONFUSION_PNG)})

![most confident mistakes]({image(paths.MISCLASSIFIED_PNG)})

## Compared with earlier runs

{champion_line}

{_table(comparison)}
"""


def to_html(text: str, title: str) -> str:
    body = markdown.markdown(text, extensions=["tables"])
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{HTML_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


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
    tracking.connect()
    import mlflow

    run = mlflow.MlflowClient().get_run(run_id)
    champion = runs.champion_run_id(params.train.registered_model, params.promote.alias)
    earlier = runs.search(limit=params.report.compare_runs)
    shown = set(earlier["run_id"]) if not earlier.empty else set()
    missing = [r for r in dict.fromkeys((run_id, champion[1])) if r and r not in shown]
    if missing:  # this run and the champion always appear, however old
        earlier = pd.concat([runs.search(run_ids=missing, limit=0), earlier], ignore_index=True)
    marks = {run_id: "this run"}
    if champion[1]:
        marks[champion[1]] = "this run, champion" if champion[1] == run_id else "champion"
    comparison = runs.comparison(earlier, marks)
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
