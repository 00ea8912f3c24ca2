"""A real study, measured: `mnist-tune` on the real data, once one trial at a time and once with `-j 2`,
side by side in one run, each in a fresh scratch copy whose default `dvc repro` ran first (as a user's
would have: the data stages are then done, and each trial reruns train, evaluate and report only).

Per trial: its wall time (what the worker waited for its `dvc exp run`), its `model.fit` time
(metrics/timing.json of its experiment) and the difference, the overhead outside `model.fit`; per study:
the wall time, and the best trial's validation and test accuracy against the baseline's (the default
params). Raw figures: bench/tune.json.

    python bench/tune.py --trials 4 --epochs 3
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
from harness import ROOT, scratch_copy

SPACE = {
    "train.learning_rate": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
    "train.batch_size": {"type": "categorical", "choices": [128, 256]},
}


def prepared_copy(dest: Path, trials: int, epochs: int) -> tuple[Path, dict]:
    """A scratch copy with the study's settings committed and the baseline trained; the baseline's figures."""
    repo = scratch_copy(dest)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = epochs
    params["tune"] |= {"study": "bench", "trials": trials, "pruner": None, "space": SPACE}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "commit", "-qam", "study settings"], cwd=repo, check=True)
    subprocess.run(["dvc", "repro"], cwd=repo, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qam", "baseline"], cwd=repo, check=True)
    train = json.loads((repo / "metrics" / "train.json").read_text())
    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    return repo, {"val_accuracy": train["val"]["accuracy"], "test_accuracy": evaluation["test"]["accuracy"]}


def experiments(repo: Path) -> dict[str, dict]:
    command = ["dvc", "exp", "show", "--json", "--no-pager"]
    shown = json.loads(subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True).stdout)
    return {e["name"]: e["revs"][0]["data"] for commit in shown for e in commit.get("experiments") or []}


def study(repo: Path, jobs: int) -> dict:
    import optuna

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MNIST_TUNE_"))}
    started = time.monotonic()
    subprocess.run(["mnist-tune", "-j", str(jobs)], cwd=repo, env=env, check=True, capture_output=True)
    wall = time.monotonic() - started
    trials = optuna.load_study(study_name="bench", storage=f"sqlite:///{repo / 'optuna.db'}").get_trials()
    shown = experiments(repo)
    rows = []
    for trial in trials:
        name = trial.user_attrs["experiment"]
        fit = shown[name]["metrics"]["metrics/timing.json"]["data"]["fit_time_s"]
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "params": trial.params,
                "val_accuracy": trial.value,
                "test_accuracy": trial.user_attrs["test_accuracy"],
                "trial_s": trial.user_attrs["seconds"],
                "fit_s": fit,
                "outside_fit_s": round(trial.user_attrs["seconds"] - fit, 1),
            }
        )
    best = max(rows, key=lambda row: row["val_accuracy"])
    return {"jobs": jobs, "wall_s": round(wall, 1), "trials": rows, "best": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="every trial's, and the baseline's")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "tune.json")
    args = parser.parse_args()
    runs = []
    for jobs in args.jobs:
        with tempfile.TemporaryDirectory(prefix="bench-tune-") as scratch:
            repo, baseline = prepared_copy(Path(scratch), args.trials, args.epochs)
            measured = study(repo, jobs) | {"baseline": baseline}
        runs.append(measured)
        outside = [row["outside_fit_s"] for row in measured["trials"]]
        print(
            f"-j {jobs}: {len(measured['trials'])} trials in {measured['wall_s']:.0f} s; outside model.fit "
            f"{statistics.median(outside):.1f} s per trial (median; {min(outside):.1f}-{max(outside):.1f}); "
            f"best val {measured['best']['val_accuracy']:.4f} / test {measured['best']['test_accuracy']:.4f} "
            f"against the baseline's {baseline['val_accuracy']:.4f} / {baseline['test_accuracy']:.4f}",
            file=sys.stderr,
        )
    record = {"command": " ".join(sys.argv), "space": SPACE, "epochs": args.epochs, "runs": runs}
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
