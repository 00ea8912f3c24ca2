"""A trial as DVC runs it: `dvc exp run --temp` of train (a training, not a release: no test set, no report,
no model version) on the workspace's prepared data, its validation figures, and what a trial whose worker
died leaves behind in this repository."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import Any

from stages.core import paths
from stages.core.errors import StageError

log = logging.getLogger(__name__)

LOG_DIR = Path("data") / "tune"  # each trial's `dvc exp run` output: data/tune/<study>/<experiment>.log
LOG_TAIL_LINES = 15
LAST_STAGE = "train"  # a trial's experiment ends here; adopting it runs the rest (`dvc repro`)
# The stage whose outputs every trial trains on, done once in the workspace: its own status covers the data
# (data/raw is its dependency, data.dataset one of its params) without download's ordering-only marker.
DATA_STAGES = ("preprocess",)


def yaml_scalar(value: Any) -> str:
    """A `-S key=value` value that YAML reads back as the same type (PyYAML wants `1.0e-05`, not `1e-05`)."""
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    return json.dumps(value)


def run_experiment(
    root: Path, study: str, name: str, values: dict[str, Any], environment: dict[str, str]
) -> tuple[int, Path]:
    """`dvc exp run --temp` of train alone (`--single-item`: `check_data` has found the data stages up to
    date, and a trial varies train.* only), in a copy of the workspace, so that trials run side by side;
    DVC waits for its repository lock rather than failing while another trial takes it. Its output goes to
    the trial's log file. Its exit status and that file."""
    log_path = root / LOG_DIR / study / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = ["dvc", "--wait-for-lock", "exp", "run", "--temp", "--name", name, "--single-item"]
    for key, value in values.items():
        command += ["--set-param", f"{key}={yaml_scalar(value)}"]
    command.append(LAST_STAGE)
    with log_path.open("w", encoding="utf-8") as output:
        output.write(" ".join(command) + "\n")
        output.flush()
        finished = subprocess.run(
            command,
            cwd=root,
            env=os.environ | environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return finished.returncode, log_path


def check_data(root: Path) -> None:
    """Refuse to start unless the data stages are up to date in this workspace: every trial trains on its
    prepared data (the same validation images for all), without rerunning those stages."""
    done = subprocess.run(
        ["dvc", "--wait-for-lock", "status", *DATA_STAGES, "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        changed = json.loads(done.stdout) if done.returncode == 0 else None
    except ValueError:
        changed = None
    if changed is None:
        reason = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        raise StageError(f"`dvc status {' '.join(DATA_STAGES)}` failed ({reason}): run it to see why")
    if changed:
        raise StageError(
            f"the data stages are not up to date here ({', '.join(sorted(changed))}), and every trial trains "
            "on this workspace's prepared data: run `dvc repro preprocess` (or `dvc pull`) first"
        )


def failure_reason(log_path: Path) -> str:
    """The last error line of a trial's log (a stage's `error: ...`, or DVC's `ERROR: ...`)."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    errors = [line.strip() for line in lines if line.lstrip().lower().startswith("error:")]
    return errors[-1] if errors else "no error line"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(f"  {line}" for line in text[-lines:])


def validation_figures(root: Path, name: str) -> dict[str, float]:
    """The experiment's final validation figures (metrics/val.json, committed with it), as `val_<name>`."""
    import dvc.api

    figures = json.loads(dvc.api.read(str(paths.VAL_METRICS), repo=str(root), rev=name))["val"]
    return {f"val_{key}": float(value) for key, value in figures.items()}


def experiment_names(root: Path) -> list[str]:
    """The names of the DVC experiments in this repository (git refs under refs/exps)."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=root, capture_output=True, text=True
    ).stdout.split()
    return [ref.rsplit("/", 1)[-1] for ref in refs]


def has_experiment(root: Path, name: str) -> bool:
    return name in experiment_names(root)


def remove_leftovers(root: Path, dead: Collection[str]) -> list[str]:
    """Remove what the `dvc exp run --temp` of each named experiment left here when its worker was killed
    with it: its temporary workspace under .dvc/tmp/exps and the records that make `dvc exp show` list it
    as running for ever (and `dvc exp remove` refuse it). DVC has no command for a dead temp run, so this
    reads its executor records (JSON under .dvc/tmp/exps/run/). Only experiments named in `dead` are
    touched: their trials are failed in the study, so nothing runs them any more. Returns their names."""
    exps = root / ".dvc" / "tmp" / "exps"
    removed = []
    for record in sorted(exps.glob("run/*/*.run")):
        try:
            info = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if info.get("location") != "tempdir" or info.get("name") not in dead:
            continue
        workspace = Path(info.get("root_dir") or "")
        if workspace.is_relative_to(exps):
            shutil.rmtree(workspace, ignore_errors=True)
        shutil.rmtree(exps / "standalone" / "run" / record.parent.name, ignore_errors=True)
        shutil.rmtree(record.parent, ignore_errors=True)
        removed.append(info["name"])
    if removed:
        log.info("removed the leftovers of killed trials' experiments: %s", ", ".join(removed))
    return removed
