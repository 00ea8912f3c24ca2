"""A trial as DVC runs it: `dvc exp run --temp` of the pipeline up to train (a training, not a release: no
test set, no report, no model version), its validation figures, and what a trial whose worker died leaves
behind in this repository."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from stages.core import paths

log = logging.getLogger(__name__)

LOG_DIR = Path("data") / "tune"  # each trial's `dvc exp run` output: data/tune/<study>/<experiment>.log
LOG_TAIL_LINES = 15
LAST_STAGE = "train"  # a trial's experiment ends here; adopting it runs the rest (`dvc repro`)
DVC_LOCKED = "Unable to acquire lock"  # DVC's message when another DVC process holds the repository
LOCK_ATTEMPTS = 5


def yaml_scalar(value: Any) -> str:
    """A `-S key=value` value that YAML reads back as the same type (PyYAML wants `1.0e-05`, not `1e-05`)."""
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    return json.dumps(value)


def run_experiment(
    root: Path, study: str, name: str, values: dict[str, Any], environment: dict[str, str]
) -> tuple[int, Path]:
    """`dvc exp run --temp` up to train (the workspace is left alone, so trials can run side by side), its
    output in the trial's log file. Its exit status and that file.

    Trials that start together in one repository (`-j`, or workers sharing a clone) contend for DVC's
    repository lock while each copies the workspace, and DVC gives up after a few seconds: such a run did
    nothing, so it is started again after a pause of random length, a few times."""
    log_path = root / LOG_DIR / study / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = ["dvc", "exp", "run", "--temp", "--name", name]
    for key, value in values.items():
        command += ["--set-param", f"{key}={yaml_scalar(value)}"]
    command.append(LAST_STAGE)
    for attempt in range(LOCK_ATTEMPTS):
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
        said = log_path.read_text(encoding="utf-8", errors="replace")
        if finished.returncode == 0 or DVC_LOCKED not in said:
            break
        log.info("trial %s: DVC's repository lock is taken; starting again (attempt %d)", name, attempt + 2)
        time.sleep(random.uniform(1, 4))
    return finished.returncode, log_path


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(f"  {line}" for line in text[-lines:])


def validation_figures(root: Path, name: str) -> dict[str, float]:
    """The experiment's final validation figures (metrics/val.json, committed with it), as `val_<name>`."""
    import dvc.api

    figures = json.loads(dvc.api.read(str(paths.VAL_METRICS), repo=str(root), rev=name))["val"]
    return {f"val_{key}": float(value) for key, value in figures.items()}


def has_experiment(root: Path, name: str) -> bool:
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=root, capture_output=True, text=True
    ).stdout.split()
    return any(ref.rsplit("/", 1)[-1] == name for ref in refs)


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
