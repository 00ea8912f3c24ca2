"""What the benchmarks share: a child process's answer, a median with its range, a scratch repository.

Standard library only, so `KERAS_BACKEND=jax python bench/train_speed.py --tutorial-only` still needs
nothing but Keras, JAX and NumPy. The scripts import it as `harness` (their own folder is on sys.path).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_result(command: list[str], what: str, cwd: Path = ROOT) -> dict:
    """Run one measurement in a fresh process; the JSON object on its last line of stdout.

    A failing child stops the benchmark with its error, rather than leaving a hole in the figures."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float], digits: int = 0, unit: str = "") -> str:
    """`median unit (min-max)`, the way every table here reports repeated runs; one value as itself."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}{unit}"
    return f"{statistics.median(values):.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def scratch_copy(dest: Path, revision: str | None = None) -> Path:
    """The working tree's tracked and new files in a fresh git repository at `dest`, as a clone would be;
    with `revision`, that commit's files instead (the code to measure side by side with today's)."""
    if revision:
        archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    else:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        for name in filter(None, listed.decode().split("\0")):
            if (ROOT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run([*git, *command], cwd=dest, check=True)
    return dest
