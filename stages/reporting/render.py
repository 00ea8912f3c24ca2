"""The report's content: the training curves, and the page as Markdown or as self-contained HTML.

Figures are drawn on matplotlib `Figure` objects rather than through pyplot, so no GUI backend is chosen.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import markdown
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from stages.core import paths
from stages.core.config import Params
from stages.core.io import atomic_path
from stages.evaluation.paired import PairedTest, Predictions, Verdict, p_clause
from stages.tracking.queries import format_accuracy

HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


@dataclass(frozen=True)
class ChampionComparison:
    """This run against the champion on the same test images (report.compare_with_champion)."""

    version: str
    run_id: str
    test: PairedTest | None = None  # None: not compared, `note` says why
    rule: Verdict | None = None
    predictions: Predictions | None = None  # this run's
    champion_predicted: np.ndarray | None = None
    note: str = ""

    def refused(self, why: str) -> ChampionComparison:
        return replace(self, note=why)

    def judged(
        self, test: PairedTest, rule: Verdict, mine: Predictions, predicted: np.ndarray, note: str
    ) -> ChampionComparison:
        return replace(self, test=test, rule=rule, predictions=mine, champion_predicted=predicted, note=note)


def save_training_curves(history: pd.DataFrame, dest: Path) -> None:
    """Accuracy and loss per epoch, training beside validation."""
    fig = Figure(figsize=(10, 3.6), dpi=100)
    acc_ax, loss_ax = fig.subplots(1, 2)
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


def _table(frame: pd.DataFrame, index: bool = False, floatfmt: str | tuple[str, ...] = ".4f") -> str:
    return frame.to_markdown(index=index, floatfmt=floatfmt) if not frame.empty else "(none)"


def render(
    params: Params,
    run: Any,
    figures: dict[str, Any],
    comparison: pd.DataFrame,
    champion: Any | None,  # the alias's `ModelVersion`, or None
    compared: ChampionComparison | None,
    image: Callable[[Path], str],
) -> str:
    """The report as Markdown; `image` turns a PNG path into the link the output format needs."""
    train, evaluation, meta, provenance = (figures[k] for k in ("train", "eval", "meta", "provenance"))
    test = evaluation["test"]
    tags, logged = run.data.tags, run.data.params
    commit = tags.get("git.commit", "unknown")[:12]
    dirty = (
        f" (with uncommitted changes: {tags.get('git.changed_files', 'see git status')})"
        if tags.get("git.dirty") == "true"
        else ""
    )
    preset = params.train.model
    val = train.get("val") or {}
    result = pd.DataFrame(
        [
            {
                "test accuracy (95% CI)": format_accuracy(
                    test["accuracy"], test.get("accuracy_ci95_low"), test.get("accuracy_ci95_high")
                ),
                "test errors": test["errors"],
                "test loss": f"{test['loss']:.4f}",
                "macro F1": f"{test['macro_f1']:.4f}",
                "val accuracy": f"{100 * val['accuracy']:.2f}%" if val else "",
                "epochs": train["epochs"],
                "train time": f"{s:.0f} s" if (s := figures["timing"].get("train_time_s")) else "",
            }
        ]
    )
    settings = {
        k.removeprefix("effective."): v
        for k, v in logged.items()
        if k.startswith("effective.") and v not in ("None", "{}")
    }
    counts = train["params"]
    per_class = pd.DataFrame.from_dict(evaluation["per_class"], orient="index").rename_axis("class")
    if champion is None:
        champion_line = f"No model carries the `{params.promote.alias}` alias yet (`mnist-promote` sets it)."
    elif champion.run_id == run.info.run_id:
        champion_line = f"This run's model is the `{params.promote.alias}` (version {champion.version})."
    else:
        champion_line = (
            f"The `{params.promote.alias}` is version {champion.version} of "
            f"`{params.train.registered_model}` (run `{champion.run_id[:8]}`)."
        )
    experiment = tags.get("dvc.experiment", "")
    splits = ", ".join(f"{name} {count:,}" for name, count in meta["splits"].items())
    interval = ""
    if "accuracy_ci95_low" in test:
        interval = f" (95% CI {100 * test['accuracy_ci95_low']:.2f}-{100 * test['accuracy_ci95_high']:.2f}%)"
    return f"""# {preset} on {meta["dataset"]}: {100 * test["accuracy"]:.2f}% test accuracy{interval}

MLflow run `{run.info.run_id}` · commit `{commit}`{dirty} · DVC experiment `{experiment}` ·
{tags.get("device", "")} · Keras {tags.get("version.keras", "")} on {tags.get("keras.backend", "")}

## Result

{_table(result)}

## Data

- **{meta["dataset"]}** from source `{provenance["source"]}` ({provenance["location"]})
- content SHA-256 `{meta["content_sha256"]}`
- splits: {splits} (seed {meta["seed"]})

## Model

- preset **{preset}**, registered as `{params.train.registered_model}`
- parameters: {counts["total"]:,} in all, {counts["trainable"]:,} trainable, {counts["non_trainable"]:,} not
- training: {", ".join(f"{k} {v}" for k, v in sorted(settings.items()))}

## Training curves

![training curves]({image(paths.TRAIN_CURVES_PNG)})

## Test results per class

{_table(per_class, index=True, floatfmt=("", ".4f", ".4f", ".4f", ".0f"))}

![confusion matrix]({image(paths.CONFUSION_PNG)})

![most confident mistakes]({image(paths.MISCLASSIFIED_PNG)})

{_champion_section(params, compared, image)}## Compared with earlier runs

{champion_line}

{_table(comparison)}
"""


def _champion_section(
    params: Params, compared: ChampionComparison | None, image: Callable[[Path], str]
) -> str:
    """The paired comparison with the champion, as `mnist-promote` would judge it; '' if there is none."""
    if compared is None:
        return ""
    alias, old = params.promote.alias, f"version {compared.version}"
    heading = f"## Compared with the {alias}, {old} (run `{compared.run_id[:8]}`)\n\n"
    if compared.test is None:
        return f"{heading}Not compared: {compared.note}.\n\n"
    test, rule = compared.test, compared.rule
    outcome = f"would take the `{alias}` alias" if rule.promote else f"would not: the `{alias}` would stay"
    lines = [
        f"On the same {test.images:,} test images, this run fixes **{len(test.fixed)}** of {old}'s mistakes "
        f"and breaks **{len(test.broken)}** of its right answers (exact McNemar test, "
        f"{p_clause(test.p_value)}; accuracy {test.accuracy_gain:+.2%}). By the promotion rule (p below "
        f"promote.alpha {params.promote.alpha:g}, a gain above promote.margin {params.promote.margin:.2%}) "
        f"this model {outcome} {rule.why}.",
    ]
    if compared.note:
        lines.append(f"{compared.note[0].upper()}{compared.note[1:]}.")
    for png, name, count in (
        (paths.FIXED_PNG, "fixed", test.fixed),
        (paths.BROKEN_PNG, "broken", test.broken),
    ):
        if len(count):
            lines.append(f"![{name}]({image(png)})")
    return heading + "\n\n".join(lines) + "\n\n"


def to_html(text: str, title: str) -> str:
    body = markdown.markdown(text, extensions=["tables"])
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{HTML_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
