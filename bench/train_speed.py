"""Training speed: the tutorials' way (numpy arrays straight into `model.fit`) against the pipeline's train
stage, with the same preset, epochs, batch size and data, side by side, alternating, each run in a fresh
process.

    python bench/train_speed.py                   # every preset, 2 epochs, 3 rounds (~35 min on 2 cores)
    python bench/train_speed.py --quick           # mlp and fast_cnn, 1 epoch, 1 round (~2 min)
    python bench/train_speed.py --presets cnn --epochs 3 --rounds 5
    KERAS_BACKEND=jax python bench/train_speed.py --tutorial-only   # a GPU box without TF/MLflow: epoch times

(a) `tutorial`: loads data/prepared with numpy, builds and compiles the preset as the train stage does
    (stages/training/presets.py) but with `compile()`'s defaults otherwise, as the tutorials do, and calls
    `model.fit(x, y, validation_data=...)`, nothing else.
(b) `pipeline`: `python -m stages.train` in a scratch folder (its own params.yaml, the prepared data
    linked in, a scratch MLflow store): seeding, deterministic ops, per-epoch history, checkpoints and
    MLflow logging, model saving and registration included.

Per run: training images per second (training images x epochs / the wall time of `model.fit`, validation
included on both sides), the process's wall time and its peak memory (max RSS). Per preset: medians and
ranges, and the ratio b/a of images per second in each round (> 1: the pipeline trains faster). The data
is data/prepared as `dvc repro preprocess` made it (the default params: 55,000 training images).
Results: bench/train_speed.json and a Markdown table on stdout.
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

from harness import spread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "train_speed.json"
ALL_PRESETS = ["mlp", "mlp_dropout", "fast_cnn", "cnn", "cnn_fashion", "best_cnn", "cnn_deep"]


def tutorial_run(preset_name: str, epochs: int) -> dict:
    """Side (a), in this process: what a tutorial script does, with the pipeline's model and settings."""
    import keras
    import numpy as np

    from stages.training import hardware
    from stages.training.presets import PRESETS, Settings, compiled_model

    keras.utils.set_random_seed(42)
    with np.load(ROOT / "data" / "prepared" / "train.npz") as npz:
        x, y = npz["x"], npz["y"]
    with np.load(ROOT / "data" / "prepared" / "val.npz") as npz:
        x_val, y_val = npz["x"], npz["y"]
    preset = PRESETS[preset_name]
    settings = Settings.for_preset(preset, epochs=epochs)
    model = compiled_model(preset, "mnist", settings, len(x), steps_per_execution=1)  # compile() defaults
    started = time.perf_counter()
    model.fit(x, y, batch_size=settings.batch_size, epochs=epochs, validation_data=(x_val, y_val), verbose=0)
    fit_s = time.perf_counter() - started
    device = hardware.describe(hardware.gpu_names())
    return {"fit_s": fit_s, "images": len(x) * epochs, "backend": keras.backend.backend(), "device": device}


def pipeline_run(preset_name: str, epochs: int, scratch: Path) -> dict:
    """Side (b): the train stage as `dvc repro` runs it, in a scratch folder; returns its own figures."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update({"model": preset_name, "epochs": epochs})
    (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (scratch / "data").mkdir(exist_ok=True)
    if not (scratch / "data" / "prepared").exists():
        (scratch / "data" / "prepared").symlink_to(ROOT / "data" / "prepared")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}
    figures = measured([sys.executable, "-m", "stages.train"], cwd=scratch, env=env)
    train = json.loads((scratch / "metrics" / "train.json").read_text())
    timing = json.loads((scratch / "metrics" / "timing.json").read_text())
    n_train = json.loads((ROOT / "data" / "prepared" / "meta.json").read_text())["splits"]["train"]
    return figures | {"fit_s": timing["fit_time_s"], "images": n_train * train["epochs"]}


def measured(command: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run a child process; its wall time and peak memory (from the kernel's accounting, via wait4)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        output = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed:\n{output[-4000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "output": output}


def one(side: str, preset: str, epochs: int, scratch: Path) -> dict:
    if side == "pipeline":
        result = pipeline_run(preset, epochs, scratch)
    else:
        command = [sys.executable, __file__, "--child", preset, "--epochs", str(epochs)]
        result = measured(command, cwd=ROOT)
        result |= json.loads(result["output"].strip().splitlines()[-1])
    result.pop("output", None)
    speed = {"images_per_s": result["images"] / result["fit_s"], "epoch_s": result["fit_s"] / epochs}
    return {"side": side, "preset": preset, "epochs": epochs, **result, **speed}


def summarise(runs: list[dict]) -> str:
    lines = [
        "| preset | epochs | tutorial images/s | pipeline images/s | b/a per round | b/a median | "
        "tutorial s per epoch | pipeline s per epoch | tutorial wall s | pipeline wall s | "
        "tutorial peak MB | pipeline peak MB |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for preset in dict.fromkeys(r["preset"] for r in runs):
        a = [r for r in runs if r["preset"] == preset and r["side"] == "tutorial"]
        b = [r for r in runs if r["preset"] == preset and r["side"] == "pipeline"]
        ratios = [rb["images_per_s"] / ra["images_per_s"] for ra, rb in zip(a, b, strict=False)]
        ratio_text = ", ".join(f"{x:.2f}" for x in ratios) or "-"
        median = f"{statistics.median(ratios):.2f}" if ratios else "-"
        pick = lambda rs, key, d=0: spread([r[key] for r in rs], d) if rs else "-"  # noqa: E731
        lines.append(
            f"| {preset} | {(a or b)[0]['epochs']} | {pick(a, 'images_per_s')} | {pick(b, 'images_per_s')} | "
            f"{ratio_text} | {median} | {pick(a, 'epoch_s', 1)} | {pick(b, 'epoch_s', 1)} | "
            f"{pick(a, 'wall_s', 1)} | {pick(b, 'wall_s', 1)} | "
            f"{pick(a, 'peak_rss_mb')} | {pick(b, 'peak_rss_mb')} |"
        )
    where = sorted({f"{r['device']} on Keras's {r['backend']} backend" for r in runs if "device" in r})
    return "\n".join(lines) + "".join(f"\n\nTutorial side: {w}." for w in where)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=ALL_PRESETS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="mlp and fast_cnn, 1 epoch, 1 round")
    parser.add_argument(
        "--tutorial-only", action="store_true", help="side (a) only: no TensorFlow/MLflow needed"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a child process: run side (a) for this preset
    args = parser.parse_args()
    if args.child:
        print(json.dumps(tutorial_run(args.child, args.epochs)))
        return
    if args.quick:
        args.presets, args.epochs, args.rounds = ["mlp", "fast_cnn"], 1, 1
    sides = ["tutorial"] if args.tutorial_only else ["tutorial", "pipeline"]
    runs = []
    with tempfile.TemporaryDirectory(prefix="train-speed-") as scratch:
        for round_ in range(args.rounds):
            for preset in args.presets:
                for side in sides if round_ % 2 == 0 else list(reversed(sides)):
                    run = one(side, preset, args.epochs, Path(scratch)) | {"round": round_ + 1}
                    runs.append(run)
                    print(
                        f"round {round_ + 1} {preset} {side}: {run['images_per_s']:.0f} images/s, "
                        f"{run['epoch_s']:.1f} s per epoch, {run['wall_s']:.1f} s in all, "
                        f"{run['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
    args.output.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    print(summarise(runs))


if __name__ == "__main__":
    main()
