"""Train every preset on the full real data through the pipeline, and write the README's results table.

Each preset runs as `dvc exp run --temp --force -S train.model=... -S data.dataset=...` with its own
defaults, so the figures come from exactly what a user runs; the numbers are read back from MLflow (the
run whose `dvc.experiment` tag is the experiment's name) and written into the README between its
`results` markers, the one place the table lives. It takes about an hour on 2 CPU cores.

    python bench/reproduce_results.py                  # every preset
    python bench/reproduce_results.py mlp cnn          # some presets
    python bench/reproduce_results.py best_cnn:fashion_mnist   # one preset on one dataset
    python bench/reproduce_results.py --table-only     # rebuild the table from runs already in MLflow
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.tracking.store import EXPERIMENT, tracking_uri  # noqa: E402
from stages.training.presets import PRESETS  # noqa: E402

# (preset, dataset) in the order they run: quick ones first, so a partial run still says something
PLAN = [
    ("mlp", "mnist"),
    ("mlp_dropout", "mnist"),
    ("fast_cnn", "mnist"),
    ("cnn", "mnist"),
    ("cnn_fashion", "fashion_mnist"),
    ("best_cnn", "mnist"),
    ("best_cnn", "fashion_mnist"),
    ("cnn_deep", "mnist"),
]
GOALS = {
    ("fast_cnn", "mnist"): ">= 99.5% in <= 4 `cnn` epochs' time",
    ("best_cnn", "mnist"): ">= 99.6%",
    ("best_cnn", "fashion_mnist"): ">= 92.5%",
}
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def train(preset: str, dataset: str) -> None:
    name = f"results-{preset}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = [
        "dvc",
        "exp",
        "run",
        "--temp",
        "--force",
        "-n",
        name,
        "-S",
        f"train.model={preset}",
        "-S",
        f"data.dataset={dataset}",
    ]
    print(f"== {' '.join(command)}", flush=True)
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True)
    print(f"== {name}: {time.monotonic() - started:.0f} s in all", flush=True)


def latest_runs() -> dict[tuple[str, str], object]:
    """The newest finished MLflow run of each (preset, dataset) that this script made."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return {}
    found = {}
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`dvc.experiment` LIKE 'results-%' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        key = (run.data.params.get("train.model"), run.data.params.get("data.dataset"))
        if key not in found and "test_accuracy" in run.data.metrics:
            found[key] = run
    return found


def table(runs: dict) -> str:
    lines = [
        "| preset | dataset | parameters | epochs | training time | test accuracy | published or goal |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for preset, dataset in PLAN:
        spec = PRESETS[preset]
        published = f"{spec.published_accuracy:.2%}" if spec.published_accuracy else GOALS[(preset, dataset)]
        run = runs.get((preset, dataset))
        if run is None:
            lines.append(f"| `{preset}` | {dataset} | | | not yet measured | | {published} |")
            continue
        metrics, params = run.data.metrics, run.data.params
        count, epochs = int(params["model.params.total"]), int(metrics["final_epochs"])
        seconds, accuracy = metrics["final_train_time_s"], metrics["test_accuracy"]
        cells = [
            f"`{preset}`",
            dataset,
            f"{count:,}",
            str(epochs),
            f"{seconds:.0f} s",
            f"{accuracy:.2%}",
            published,
        ]
        lines.append(f"| {' | '.join(cells)} |")
    footer = f"Measured by `python bench/reproduce_results.py` on {os.cpu_count()} CPU cores."
    return "\n".join(lines) + f"\n\n{footer}\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("presets", nargs="*", help="presets (or preset:dataset) to train (default: all)")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table from MLflow")
    args = parser.parse_args()
    choices = {preset for preset, _ in PLAN} | {f"{preset}:{dataset}" for preset, dataset in PLAN}
    unknown = set(args.presets) - choices
    if unknown:
        parser.error(f"unknown presets {sorted(unknown)}; choose from {sorted(choices)}")
    if not args.table_only:
        for preset, dataset in PLAN:
            if not args.presets or {preset, f"{preset}:{dataset}"} & set(args.presets):
                train(preset, dataset)
    text = table(latest_runs())
    readme = README.read_text()
    before, _, rest = readme.partition(BEGIN)
    _, _, after = rest.partition(END)
    if not rest:
        sys.exit(f"{README} has no {BEGIN} ... {END} block to write the table into")
    README.write_text(f"{before}{BEGIN}\n{text}{END}{after}")
    print(text)


if __name__ == "__main__":
    main()
