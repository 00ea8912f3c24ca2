"""What a trial of `mnist-tune` costs outside `model.fit`, today's code side by side with another revision's
(e.g. 577eaf8, whose trials ran the whole pipeline), rounds alternating, on the same small study.

Each side gets a fresh scratch copy of its revision whose baseline `dvc repro` ran first (as a user's
would have: the data stages are then done), then runs its own `mnist-tune` (`python -m stages.cli.tune`,
so each side runs its own code) one trial at a time. Per trial: the worker's wall time for its
`dvc exp run`, the stages' own times (MNIST_PIPELINE_TIMINGS: each stage process appends its imports and
phases), and the rest: DVC and process starts. Raw figures: bench/tune.json.

    python bench/tune.py --baseline 577eaf8 --trials 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from harness import ROOT, scratch_copy, spread

SPACE = {"train.learning_rate": {"type": "float", "low": 0.001, "high": 0.01, "log": True}}
PIPELINE = ("check_params", "download", "preprocess", "train", "package", "evaluate", "report")
SMALL = {"preprocess": {"val_size": 500, "limit": 2000}, "train": {"model": "fast_cnn", "epochs": 1}}


def prepared_copy(dest: Path, revision: str | None, trials: int) -> Path:
    """A scratch copy of `revision` (None: the working tree) with the study committed, its baseline run."""
    repo = scratch_copy(dest, revision)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section] |= values
    params["tune"] |= {"study": "bench", "trials": trials, "pruner": None, "space": SPACE}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "commit", "-qam", "study settings"], cwd=repo, check=True)
    subprocess.run(["dvc", "repro"], cwd=repo, env=clean_env(), check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qam", "baseline"], cwd=repo, check=True)
    return repo


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MNIST_TUNE_", "MNIST_PIPE"))}
    return env | extra


def trials_of(entries: list[dict]) -> list[list[dict]]:
    """The stage timings, one list per trial: each trial's `dvc exp run` starts with check_params (577eaf8:
    the whole pipeline) or train (today: train alone)."""
    grouped: list[list[dict]] = []
    for entry in (e for e in entries if e["stage"] in PIPELINE):  # not mnist-tune's own
        after_check = bool(grouped) and grouped[-1][-1]["stage"] == "check_params"
        if entry["stage"] == "check_params" or (entry["stage"] == "train" and not after_check) or not grouped:
            grouped.append([])
        grouped[-1].append(entry)
    return grouped


def study(repo: Path) -> dict:
    """One study, one trial at a time: per trial, its wall time split into fit, each stage's rest, DVC."""
    import optuna

    timings = repo / "timings.jsonl"
    started = time.monotonic()
    command = [sys.executable, "-m", "stages.cli.tune", "-j", "1"]
    subprocess.run(
        command, cwd=repo, env=clean_env(MNIST_PIPELINE_TIMINGS=str(timings)), check=True, capture_output=True
    )
    wall = time.monotonic() - started
    storage = f"sqlite:///{repo / 'optuna.db'}"
    trials = [t for t in optuna.load_study(study_name="bench", storage=storage).get_trials() if t.value]
    stages = trials_of([json.loads(line) for line in timings.read_text().splitlines()])
    rows = []
    for trial, entries in zip(trials, stages, strict=True):
        fit = sum(e["phases_s"].get("fit", 0.0) for e in entries)
        parts = {e["stage"]: round(e["total_s"] - e["phases_s"].get("fit", 0.0), 2) for e in entries}
        seconds = trial.user_attrs["seconds"]
        parts["dvc and process starts"] = round(seconds - sum(e["total_s"] for e in entries), 2)
        rows.append(
            {
                "trial": trial.number,
                "trial_s": seconds,
                "fit_s": round(fit, 2),
                "outside_fit_s": round(seconds - fit, 2),
                "parts_s": parts,
                "train_phases_s": next(e["phases_s"] for e in entries if e["stage"] == "train"),
            }
        )
    return {"wall_s": round(wall, 1), "trials": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline", default="577eaf8", help="the revision to measure beside the working tree"
    )
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "tune.json")
    args = parser.parse_args()
    sides: dict[str, list[dict]] = {"working tree": [], args.baseline: []}
    for _ in range(args.rounds):
        for side in sides:
            with tempfile.TemporaryDirectory(prefix="bench-tune-") as scratch:
                repo = prepared_copy(Path(scratch), None if side == "working tree" else side, args.trials)
                sides[side].append(study(repo))
    outside = {
        side: [t["outside_fit_s"] for run in runs for t in run["trials"]] for side, runs in sides.items()
    }
    medians = {side: statistics.median(values) for side, values in outside.items()}
    for side, runs in sides.items():
        parts: dict[str, list[float]] = {}
        for trial in (t for run in runs for t in run["trials"]):
            for name, seconds in trial["parts_s"].items():
                parts.setdefault(name, []).append(seconds)
        shown = ", ".join(f"{name} {spread(values, 1, ' s')}" for name, values in parts.items())
        print(
            f"{side}: outside model.fit {spread(outside[side], 1, ' s')} per trial; {shown}", file=sys.stderr
        )
    ratio = medians["working tree"] / medians[args.baseline]
    print(f"outside model.fit, working tree / {args.baseline}: {ratio:.2f}", file=sys.stderr)
    record = {
        "command": " ".join(sys.argv),
        "small_params": SMALL,
        "space": SPACE,
        "outside_fit_median_s": medians,
        "outside_fit_ratio": round(ratio, 3),
        "sides": sides,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
