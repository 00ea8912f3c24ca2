"""How fast the registered model answers when served by `mlflow models serve`: the latency of one image
(p50, p90) and the images per second of batches of 32, each request a JSON `inputs` of uint8 pixels, as
a client sends them.

    python bench/serving.py                                    # the champion of the repository's registry
    python bench/serving.py --model models:/mnist-classifier/3 --requests 50 --batches 20
    python bench/serving.py --model runs:/OLD/model runs:/NEW/model --rounds 2   # side by side

Writes bench/serving.json (or --output) and prints a Markdown table. The server runs on 127.0.0.1 with
`--env-manager local` and one worker; the figures include HTTP and JSON, as a client sees them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: bytes) -> float:
    """Seconds from sending the request to having read the whole answer."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


def test_images(count: int) -> list:
    """MNIST test digits as uint8 lists (the prepared test split, scaled back)."""
    import numpy as np

    with np.load(ROOT / "data" / "prepared" / "test.npz") as data:
        return (data["x"][:count, ..., 0] * 255).round().astype(np.uint8).tolist()


def serve_and_measure(model: str, requests: int, batches: int) -> dict:
    """Start `mlflow models serve` for `model`, time its answers, stop it."""
    port = free_port()
    env = os.environ | {
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")
    }
    command = [
        "mlflow",
        "models",
        "serve",
        "-m",
        model,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = (ROOT / "bench" / "serving.log").open("w")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start; see {log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/invocations"
        images = test_images(32 + requests)
        single = [json.dumps({"inputs": [image]}).encode() for image in images[:requests]]
        batch = json.dumps({"inputs": images[:32]}).encode()
        for body in single[:10]:  # warm-up: the first calls trace the model
            post(url, body)
        latencies = sorted(post(url, body) for body in single)
        batch_s = [post(url, batch) for _ in range(batches)]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    return {
        "model": model,
        "single_image_ms": {
            "p50": round(1000 * statistics.median(latencies), 2),
            "p90": round(1000 * latencies[int(0.9 * (len(latencies) - 1))], 2),
            "requests": len(latencies),
        },
        "batch_32": {
            "images_per_s": round(32 * len(batch_s) / sum(batch_s), 1),
            "median_ms": round(1000 * statistics.median(batch_s), 2),
            "requests": len(batch_s),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["models:/mnist-classifier@champion"])
    parser.add_argument("--requests", type=int, default=200, help="single-image requests (after 10 warm-up)")
    parser.add_argument("--batches", type=int, default=50, help="requests of 32 images")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per model, alternating their order")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "serving.json")
    args = parser.parse_args()

    runs = []
    for round_ in range(args.rounds):
        for model in args.model if round_ % 2 == 0 else list(reversed(args.model)):
            runs.append(serve_and_measure(model, args.requests, args.batches) | {"round": round_ + 1})
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "runs": runs}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    header = ["model", "round", "1 image p50", "p90", "32 images", "images/s"]
    print(f"| {' | '.join(header)} |\n| --- |{' ---: |' * (len(header) - 1)}")
    for run in runs:
        one, many = run["single_image_ms"], run["batch_32"]
        print(
            f"| {run['model']} | {run['round']} | {one['p50']} ms | {one['p90']} ms | {many['median_ms']} ms "
            f"| {many['images_per_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
