"""mnist-predict on one image, the whole process, as a user waits for it: the LiteRT model (the default),
the Keras model (what mnist-predict ran before it had LiteRT), and `python -c "import tensorflow"` (the
yardstick of the goal: at most half of it), in rounds that alternate their order.

    python bench/predict.py --rounds 7

Needs the pipeline's outputs (`dvc repro`). Writes bench/predict.json and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "predict.json"


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    predict = shutil.which("mnist-predict") or sys.exit("mnist-predict is not installed: pip install -e .")
    with tempfile.TemporaryDirectory() as scratch:
        digit = Path(scratch) / "digit.png"
        with np.load(ROOT / "data" / "prepared" / "test.npz") as data:
            Image.fromarray((data["x"][0, ..., 0] * 255).round().astype(np.uint8)).save(digit)
        commands = {
            "litert": [predict, str(digit)],
            "keras": [predict, "--model", "data/model/model.keras", str(digit)],
            "import_tensorflow": [sys.executable, "-c", "import tensorflow"],
        }
        for command in commands.values():  # warm the page cache
            seconds(command)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(args.rounds):
            order = list(commands) if round_ % 2 == 0 else list(reversed(commands))
            for name in order:
                times[name].append(seconds(commands[name]))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {
        "litert_over_import_tensorflow": medians["litert"] / medians["import_tensorflow"],
        "keras_over_import_tensorflow": medians["keras"] / medians["import_tensorflow"],
        "litert_over_keras": medians["litert"] / medians["keras"],
    }
    RESULTS.write_text(json.dumps({"seconds": times, "medians": medians, "ratios": ratios}, indent=1) + "\n")
    for name, value in medians.items():
        print(f"{name}: {value:.2f} s (median of {args.rounds})")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
