"""Pipeline overhead: one whole `dvc repro` broken down per stage into imports, loading data, computing,
training (`model.fit`), MLflow, saving outputs and the rest, plus DVC's own time; then a no-op `dvc repro`.

    python bench/overhead.py               # the default params: a whole default training
    python bench/overhead.py --epochs 1    # the same breakdown around a 1-epoch training
    python bench/overhead.py --quick       # 1 epoch, 3 no-op repeats
    python bench/overhead.py --epochs 1 --baseline origin/main --rounds 2   # side by side with main

It runs in a scratch copy of the working tree (tracked and new files in a fresh git repository, an empty DVC
cache and MLflow store), so the first `dvc repro` does everything a newcomer's does, the download through
the default source chain included (on our build machine, which reaches only package indexes: from PyPI).
Each stage reports its phases through stages/core/timing.py. Goals (on our 2-core machine): everything
except `model.fit` <= 12 s; a no-op `dvc repro` runs no stage, in <= 2.5 x the time of `dvc version`
(timed alternately with it), and `dvc status` says all is up to date; preprocessing full MNIST <= 3 s.
With --baseline, another revision's code (e.g. main) is measured the same way, rounds alternating.
It also times, in fresh processes, what no stage can avoid (starting Python, importing Keras and
TensorFlow, opening the MLflow store) and adds it up over one `dvc repro`: the floor of the first goal.
Results: bench/overhead.json and a Markdown table on stdout.
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
from harness import scratch_copy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "overhead.json"
COLUMNS = ["imports", "load data", "compute", "fit", "mlflow", "save outputs", "other"]
GOALS = {"non_fit_s": 12.0, "preprocess_s": 3.0}  # and a no-op repro <= 2.5 x `dvc version`


def timed(command: list[str], cwd: Path, env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return time.perf_counter() - started


# What no stage can avoid, each timed in a fresh Python in the scratch copy: the pipeline pays the first once
# per stage process (6), Keras and TensorFlow in train, LiteRT's runtime in evaluate, and the MLflow store in
# train and report.
# Each probe skips the interpreter's teardown (os._exit): the floor is what no stage can avoid. The stages
# themselves do tear down (docs/performance.md says why and what it costs).
FLOOR_PROBES = {
    name: f"import os; {code}; os._exit(0)"
    for name, code in {
        "python_start_s": "pass",
        "import_keras_s": "import keras",
        "import_litert_s": "from ai_edge_litert.interpreter import Interpreter",
        "mlflow_store_s": "import mlflow; mlflow.MlflowClient('sqlite:///floor.db').search_experiments()",
    }.items()
}
FLOOR_COUNTS = {"python_start_s": 6, "import_keras_s": 1, "import_litert_s": 1, "mlflow_store_s": 2}


def floor(repo: Path, env: dict, repeats: int = 3) -> dict[str, float]:
    """Median seconds of each probe, and what they add up to over one `dvc repro`."""
    medians = {
        name: statistics.median(timed([sys.executable, "-c", code], repo, env) for _ in range(repeats))
        for name, code in FLOOR_PROBES.items()
    }
    return medians | {"imports_floor_s": sum(medians[name] * FLOOR_COUNTS[name] for name in medians)}


def breakdown(entries: list[dict], total_s: float) -> tuple[list[dict], dict]:
    rows = []
    for entry in entries:
        row = {"stage": entry["stage"], "imports": entry["imports_s"], "other": entry["other_s"]}
        row |= {name: entry["phases_s"].get(name, 0.0) for name in COLUMNS[1:-1]}
        unknown = set(entry["phases_s"]) - set(COLUMNS)
        if unknown:
            sys.exit(f"stage {entry['stage']} reports phases {unknown} this table does not know")
        row["total"] = entry["total_s"]
        rows.append(row)
    stages_s = sum(row["total"] for row in rows)
    fit_s = sum(row["fit"] for row in rows)
    return rows, {
        "repro_s": total_s,
        "dvc_own_s": total_s - stages_s,  # DVC's start, hashing, locking, and each Python's start-up
        "fit_s": fit_s,
        "non_fit_s": total_s - fit_s,
    }


def table(rows: list[dict], summary: dict, noop: list[float]) -> str:
    header = "| stage | " + " | ".join(COLUMNS) + " | process total |"
    lines = [header, "|" + " --- |" + " ---: |" * (len(COLUMNS) + 1)]
    for row in rows:
        lines.append(
            f"| {row['stage']} | " + " | ".join(f"{row[c]:.2f}" for c in COLUMNS) + f" | {row['total']:.2f} |"
        )
    lines.append(f"| DVC itself | | | | | | | | {summary['dvc_own_s']:.2f} |")
    preprocess = next((r["total"] for r in rows if r["stage"] == "preprocess"), float("nan"))
    checks = [
        ("`dvc repro` in all", summary["repro_s"], None),
        ("everything but `model.fit`", summary["non_fit_s"], GOALS["non_fit_s"]),
        (f"no-op `dvc repro` (median of {len(noop)})", statistics.median(noop), None),
        ("preprocess, whole process", preprocess, GOALS["preprocess_s"]),
    ]
    bound = summary["floor"]
    floor_parts = (
        f"starting Python 6 times ({bound['python_start_s']:.2f} s each), importing Keras and TensorFlow "
        f"once ({bound['import_keras_s']:.2f} s), LiteRT's runtime once ({bound['import_litert_s']:.2f} s) "
        f"and opening the MLflow store twice ({bound['mlflow_store_s']:.2f} s each)"
    )
    checks.append((f"floor of one process per stage: {floor_parts}", bound["imports_floor_s"], None))
    lines.append("")
    for name, value, goal in checks:
        verdict = "" if goal is None else f" (goal <= {goal:g} s: {'met' if value <= goal else 'MISSED'})"
        lines.append(f"- {name}: {value:.2f} s{verdict}")
    return "\n".join(lines)


def measure(revision: str | None, epochs: int | None, noop_repeats: int) -> dict:
    """One whole `dvc repro --force` of a scratch copy (of the working tree, or of `revision`), broken
    down; then the no-op repros beside `dvc version`, and what `dvc status` says after them."""
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        repo = scratch_copy(Path(tmp), revision)
        if epochs:
            params = yaml.safe_load((repo / "params.yaml").read_text())
            params["train"]["epochs"] = epochs
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        timings = repo / "timings.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env |= {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
            "MNIST_PIPELINE_TIMINGS": str(timings),
        }
        # --force: the committed outputs match what this copy trains (same bytes), so a plain repro would
        # skip evaluate; the breakdown is of every stage
        total_s = timed(["dvc", "repro", "--force"], repo, env)
        entries = [json.loads(line) for line in timings.read_text().splitlines()]
        timings.unlink()
        noop, version = [], []
        for _ in range(noop_repeats):  # alternating, so that both see the same machine
            noop.append(timed(["dvc", "repro"], repo, env))
            version.append(timed(["dvc", "version"], repo, env))
        ran = []  # the stages the no-op repros ran, from the timings they recorded
        if timings.exists():
            ran = [json.loads(line)["stage"] for line in timings.read_text().splitlines()]
        status_command = ["dvc", "status", "--json"]
        status = json.loads(subprocess.run(status_command, cwd=repo, env=env, capture_output=True).stdout)
        lower_bound = floor(repo, env)
    rows, summary = breakdown(entries, total_s)
    summary |= {
        "noop_repro_s": noop,
        "dvc_version_s": version,
        "noop_over_dvc_version": statistics.median(noop) / statistics.median(version),
        "stages_run_by_noop_repros": ran,
        "dvc_status_after": status,
        "epochs": epochs,
        "floor": lower_bound,
    }
    return {"revision": revision or "working tree", "stages": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, help="train.epochs (default: the preset's)")
    parser.add_argument("--noop-repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 3 no-op repeats")
    parser.add_argument("--baseline", help="also measure this git revision, side by side, rounds alternating")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each side (with --baseline)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.noop_repeats = 1, 3
    sides = [None, args.baseline] if args.baseline else [None]
    runs = []
    for round_ in range(args.rounds):
        for revision in sides if round_ % 2 == 0 else list(reversed(sides)):
            runs.append(measure(revision, args.epochs, args.noop_repeats) | {"round": round_ + 1})
    result: dict = {"runs": runs}
    if args.baseline:
        medians = {
            side: statistics.median(r["summary"]["non_fit_s"] for r in runs if r["revision"] == side)
            for side in ("working tree", args.baseline)
        }
        result["non_fit_s_median"] = medians
        result["non_fit_ratio"] = medians["working tree"] / medians[args.baseline]
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    for run in runs:
        summary = run["summary"]
        print(f"\n### {run['revision']}, round {run['round']}\n")
        print(table(run["stages"], summary, summary["noop_repro_s"]))
        print(
            f"- no-op `dvc repro` / `dvc version`: {summary['noop_over_dvc_version']:.2f}; stages the no-op "
            f"repros ran: {summary['stages_run_by_noop_repros'] or 'none'}; `dvc status`: "
            f"{summary['dvc_status_after'] or 'up to date'}"
        )
    if args.baseline:
        print(f"\neverything but `model.fit`, working tree / {args.baseline}: {result['non_fit_ratio']:.2f}")


if __name__ == "__main__":
    main()
