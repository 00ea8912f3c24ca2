"""ONNX (tf2onnx, run by onnxruntime) or LiteRT (TensorFlow's converter, run by ai-edge-litert): which light
format the trained model is served in. Both are measured on the repository's model, side by side:

- reproducible: two conversions, each in a fresh process, give the same bytes (DVC needs it);
- faithful: the largest probability difference from Keras and the classes that differ, whole test set;
- conversion time; the runtime's import time (fresh processes); one-image p50 latency and images/s in
  batches of 32, rounds alternating between the two.

    pip install tf2onnx onnxruntime      # ONNX is only measured here: the pipeline does not need it
    python bench/inference_format.py --rounds 5

Writes bench/inference_format.json and prints a table. docs/serving.md has the decision.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "inference_format.json"
FORMATS = {"onnx": ".onnx", "litert": ".tflite"}


def convert(fmt: str, dest: Path) -> float:
    """Convert data/model/model.keras in this process; the seconds it took."""
    import keras
    import numpy as np

    model = keras.saving.load_model(ROOT / "data" / "model" / "model.keras")
    if fmt == "onnx":  # Keras' ONNX export wants a model that has been called; LiteRT's must not be
        model(np.zeros((1, 28, 28, 1), "float32"))  # (after the call, its LiteRT file answered differently)
    started = time.perf_counter()
    model.export(str(dest), format=fmt, verbose=False)
    return time.perf_counter() - started


def runner(fmt: str, path: Path):
    """A function from N x 28 x 28 x 1 float32 images to probabilities."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    from stages.serving.lite import LiteModel

    return LiteModel(path).probabilities


def import_seconds(fmt: str) -> float:
    module = "onnxruntime" if fmt == "onnx" else "ai_edge_litert.interpreter"
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)


def latency(run, images, requests: int) -> tuple[float, float]:
    """One-image p50 (ms) and images/s in batches of 32."""
    run(images[:1])
    single = []
    for i in range(requests):
        started = time.perf_counter()
        run(images[i : i + 1])
        single.append(time.perf_counter() - started)
    started = time.perf_counter()
    batches = len(images) // 32
    for i in range(batches):
        run(images[i * 32 : (i + 1) * 32])
    return statistics.median(single) * 1000, batches * 32 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--convert", nargs=2, help=argparse.SUPPRESS)  # a child: FORMAT DEST
    args = parser.parse_args()
    if args.convert:
        print(convert(args.convert[0], Path(args.convert[1])))
        return

    import numpy as np

    with np.load(ROOT / "data" / "prepared" / "test.npz") as data:
        images = data["x"].astype(np.float32)
    import keras

    expected = keras.saving.load_model(ROOT / "data" / "model" / "model.keras").predict(images, verbose=0)
    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        for fmt, suffix in FORMATS.items():
            paths = [Path(scratch) / f"{fmt}-{i}{suffix}" for i in (1, 2)]
            seconds = [
                float(
                    subprocess.run(
                        [sys.executable, __file__, "--convert", fmt, str(path)],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout.split()[-1]
                )
                for path in paths
            ]
            digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
            try:
                probabilities = runner(fmt, paths[0])(images)
            except Exception as exc:  # a runtime that cannot load what its converter wrote
                results[fmt] = {
                    "conversion_s": seconds,
                    "reproducible": digests[0] == digests[1],
                    "error": str(exc),
                }
                continue
            results[fmt] = {
                "conversion_s": seconds,
                "reproducible": digests[0] == digests[1],
                "bytes": paths[0].stat().st_size,
                "max_probability_difference": float(np.abs(probabilities - expected).max()),
                "classes_that_differ": int((probabilities.argmax(1) != expected.argmax(1)).sum()),
                "import_s": [],
                "p50_ms": [],
                "images_per_s_batch32": [],
                "path": paths[0],
            }
        working = [fmt for fmt in FORMATS if "error" not in results[fmt]]
        for round_ in range(args.rounds):
            for fmt in working if round_ % 2 == 0 else reversed(working):
                row = results[fmt]
                row["import_s"].append(import_seconds(fmt))
                p50, throughput = latency(runner(fmt, row["path"]), images, args.requests)
                row["p50_ms"].append(p50)
                row["images_per_s_batch32"].append(throughput)
        for row in results.values():
            row.pop("path", None)
    RESULTS.write_text(json.dumps({"rounds": args.rounds, "formats": results}, indent=1) + "\n")
    print("| format | reproducible | max difference | import (median) | one image p50 | batch-32 images/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for fmt, row in results.items():
        if "error" in row:
            print(f"| {fmt} | {row['reproducible']} | fails to load: {row['error'][:120]} | | | |")
            continue
        print(
            f"| {fmt} | {row['reproducible']} | {row['max_probability_difference']:.1e} | "
            f"{statistics.median(row['import_s']):.2f} s | {statistics.median(row['p50_ms']):.2f} ms | "
            f"{statistics.median(row['images_per_s_batch32']):.0f} |"
        )


if __name__ == "__main__":
    main()
