"""What a trial of `mnist-tune` costs outside `model.fit`, today's code side by side with another revision's
(e.g. 577eaf8, whose trials ran the whole pipeline), rounds alternating, on the same small study.

Each side gets a fresh scratch copy of its revision whose baseline `dvc repro` ran first (as a user's
would have: the data stages are then done), then runs its own `mnist-tune` (`python -m stages.cli.tune`,
so each side runs its own code) one trial at a time. Per trial: the worker's wall time for its
`dvc exp run`, the stages' own times (MNIST_PIPELINE_TIMINGS: each stage process appends its imports and
phases), and the rest: DVC and process starts. Raw figures: bench/tune.json.

With --real, today's code only, on the real data: a study's wall time for each -j (bench/tune_real.json).

    python bench/tune.py --baseline 577eaf8 --trials 3 --rounds 2
    python bench/tune.py --real --trials 4 --jobs 1 2
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
REAL = {"preprocess": {"val_size": 5000, "limit": None}, "train": {"model": "fast_cnn", "epochs": 1}}


def prepared_copy(dest: Path, revision: str | None, trials: int, settings: dict) -> Path:
    """A scratch copy of `revision` (None: the working tree) with the study committed, its baseline run."""
    repo = scratch_copy(dest, revision)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in settings.items():
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


def study(repo: Path, jobs: int = 1) -> dict:
    """One study: its wall time and each trial's; one trial at a time, also each trial's wall time split
    into fit, each stage's rest, and DVC (trials side by side interleave their stages' timings)."""
    import optuna

    timings = repo / "timings.jsonl"
    started = time.monotonic()
    command = [sys.executable, "-m", "stages.cli.tune", "-j", str(jobs)]
    env = clean_env(MNIST_PIPELINE_TIMINGS=str(timings))
    subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    wall = time.monotonic() - started
    storage = f"sqlite:///{repo / 'optuna.db'}"
    trials = [t for t in optuna.load_study(study_name="bench", storage=storage).get_trials() if t.value]
    if jobs > 1:
        shown = [{"trial": t.number, "trial_s": t.user_attrs["seconds"], "value": t.value} for t in trials]
        return {"jobs": jobs, "wall_s": round(wall, 1), "trials": shown}
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
                "value": trial.value,
                "fit_s": round(fit, 2),
                "outside_fit_s": round(seconds - fit, 2),
                "parts_s": parts,
                "train_phases_s": next(e["phases_s"] for e in entries if e["stage"] == "train"),
            }
        )
    return {"jobs": 1, "wall_s": round(wall, 1), "trials": rows}


def real_studies(trials: int, jobs: list[int], out: Path) -> None:
    """Today's code on the real data (all 55,000 training images, `fast_cnn`, one epoch a trial): one study
    for each `-j`, each in a fresh scratch copy whose baseline ran first."""
    runs = []
    for n in jobs:
        with tempfile.TemporaryDirectory(prefix="bench-tune-") as scratch:
            repo = prepared_copy(Path(scratch), None, trials, REAL)
            runs.append(study(repo, n))
        print(f"-j {n}: {trials} trials in {runs[-1]['wall_s']:.0f} s", file=sys.stderr)
    record = {"command": " ".join(sys.argv), "params": REAL, "space": SPACE, "studies": runs}
    out.write_text(json.dumps(record, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline", default="577eaf8", help="the revision to measure beside the working tree"
    )
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=None, help="default: bench/tune.json (--real: tune_real.json)"
    )
    parser.add_argument(
        "--real", action="store_true", help="today's code on the real data, a study per --jobs"
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="with --real: -j of each study")
    args = parser.parse_args()
    if args.real:
        real_studies(args.trials, args.jobs, args.out or ROOT / "bench" / "tune_real.json")
        return
    args.out = args.out or ROOT / "bench" / "tune.json"
    sides: dict[str, list[dict]] = {"working tree": [], args.baseline: []}
    for _ in range(args.rounds):
        for side in sides:
            with tempfile.TemporaryDirectory(prefix="bench-tune-") as scratch:
                revision = None if side == "working tree" else side
                repo = prepared_copy(Path(scratch), revision, args.trials, SMALL)
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
