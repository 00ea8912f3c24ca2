"""The fastest way to feed `model.fit` on CPU: each candidate input path trains the same preset on the same
data, side by side, in a fresh process per run, the order rotating each round.

    python bench/input_path.py           # fast_cnn and mlp, 2 epochs, 3 rounds (~10 min on 2 cores)
    python bench/input_path.py --presets mlp --epochs 1 --rounds 1    # a smoke test

Variants (everything else as the train stage does it: stages/models.compiled_model, seed 42):
  arrays_spe1   numpy arrays into fit(), one step per call into TensorFlow: what the tutorials do
  arrays        numpy arrays, steps_per_execution=32: what the train stage does
  tf_data       a tf.data pipeline (shuffle, batch, prefetch), steps_per_execution=32
  threads       arrays, steps_per_execution=32, TensorFlow's pools: intra-op = the cores, inter-op = 1
  bf16          arrays, steps_per_execution=32, the mixed_bfloat16 policy (the softmax stays float32)

Per run: seconds of each epoch (the first includes tracing), training images/s over the last epoch, and the
validation accuracy after the last epoch (bf16 must not cost accuracy). Needs TensorFlow and data/prepared as
`dvc repro preprocess` made it. Results: bench/input_path.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from harness import child_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "input_path.json"
VARIANTS = ["arrays_spe1", "arrays", "tf_data", "threads", "bf16"]


def run_variant(variant: str, preset_name: str, epochs: int) -> dict:
    """One training in this process; called through `--one` so that every run starts fresh."""
    import keras
    import numpy as np
    import tensorflow as tf

    from stages.training.presets import PRESETS, Settings, compiled_model

    if variant == "threads":
        tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if variant == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(42)
    with np.load(ROOT / "data" / "prepared" / "train.npz") as npz:
        x, y = npz["x"], npz["y"]
    with np.load(ROOT / "data" / "prepared" / "val.npz") as npz:
        val = (npz["x"], npz["y"])
    preset = PRESETS[preset_name]
    settings = Settings.for_preset(preset, epochs=epochs)
    spe = 1 if variant == "arrays_spe1" else 32
    model = compiled_model(preset, "mnist", settings, len(x), steps_per_execution=spe)
    epoch_s: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: epoch_s.append(-time.perf_counter()),
        on_epoch_end=lambda epoch, logs: epoch_s.__setitem__(-1, epoch_s[-1] + time.perf_counter()),
    )
    if variant == "tf_data":
        train = (
            tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=42, reshuffle_each_iteration=True)
            .batch(settings.batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
        val_data = (
            tf.data.Dataset.from_tensor_slices(val).batch(settings.batch_size).prefetch(tf.data.AUTOTUNE)
        )
        history = model.fit(train, epochs=epochs, validation_data=val_data, callbacks=[timer], verbose=0)
    else:
        history = model.fit(
            x,
            y,
            batch_size=settings.batch_size,
            epochs=epochs,
            validation_data=val,
            callbacks=[timer],
            verbose=0,
        )
    return {
        "epoch_s": [round(s, 3) for s in epoch_s],
        "last_epoch_images_per_s": round(len(x) / epoch_s[-1]),
        "val_accuracy": round(float(history.history["val_accuracy"][-1]), 4),
    }


def summarise(runs: list[dict]) -> str:
    lines = [
        "| preset | variant | last epoch, images/s | to `arrays_spe1`, per round | median | first epoch, s "
        "| val accuracy |",
        "| --- | --- | ---: | --- | ---: | ---: | --- |",
    ]
    for preset in dict.fromkeys(r["preset"] for r in runs):
        base = {
            r["round"]: r["last_epoch_images_per_s"]
            for r in runs
            if r["preset"] == preset and r["variant"] == "arrays_spe1"
        }
        for variant in VARIANTS:
            mine = [r for r in runs if r["preset"] == preset and r["variant"] == variant]
            if not mine:
                continue
            ratios = [r["last_epoch_images_per_s"] / base[r["round"]] for r in mine if r["round"] in base]
            speed = statistics.median(r["last_epoch_images_per_s"] for r in mine)
            first = statistics.median(r["epoch_s"][0] for r in mine)
            accuracy = sorted({r["val_accuracy"] for r in mine})
            lines.append(
                f"| {preset} | {variant} | {speed:,.0f} | {', '.join(f'{q:.2f}' for q in ratios)} | "
                f"{statistics.median(ratios):.2f} | {first:.1f} | {', '.join(f'{a:.4f}' for a in accuracy)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["fast_cnn", "mlp"])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--one", nargs=3, metavar=("VARIANT", "PRESET", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        variant, preset, epochs = args.one
        print(json.dumps(run_variant(variant, preset, int(epochs))))
        return
    runs = []
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(args.variants)
        order = args.variants[shift:] + args.variants[:shift]  # each variant takes each slot in turn
        for preset in args.presets:
            for variant in order:
                command = [sys.executable, __file__, "--one", variant, preset, str(args.epochs)]
                result = child_result(command, f"{variant} {preset}")
                runs.append({"round": round_no, "preset": preset, "variant": variant, **result})
                print(f"round {round_no} {preset} {variant}: {result}", file=sys.stderr, flush=True)
    args.output.write_text(json.dumps({"epochs": args.epochs, "runs": runs}, indent=1) + "\n")
    print(summarise(runs))


if __name__ == "__main__":
    main()
