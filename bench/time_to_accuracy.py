"""Time to accuracy: how long each preset trains before its test accuracy reaches a target, measured side by
side, alternating, several times, each run in a fresh process.

    python bench/time_to_accuracy.py                       # fast_cnn and cnn, 2 rounds, target 99.5%
    python bench/time_to_accuracy.py --rounds 3 --presets fast_cnn cnn best_cnn
    python bench/time_to_accuracy.py --quick               # 1 round of 2 epochs each, a smoke test
    python bench/time_to_accuracy.py --presets fast_cnn cnn --seeds 42 43 44 --reference-epochs 4 --rounds 1

It trains exactly as the train stage does (the same preset, optimizer, schedule, batch size, seeds and
deterministic ops, on data/prepared from `dvc repro preprocess` with the default params), and after every
epoch measures test accuracy, outside the timed part; the final accuracy is the saved model's (batch norm
settled, as train does). A benchmark may look at the test set after each epoch;
the pipeline never does. Rounds alternate the order of the presets, so that neither always runs first on a
machine that warms up or slows down. Results: bench/time_to_accuracy.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from harness import child_result, spread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "time_to_accuracy.json"


def one_run(preset_name: str, epochs: int | None, seed: int = 42) -> dict:
    """Train one preset in this process; per-epoch training time and test accuracy."""
    import keras

    from stages.core import paths
    from stages.data.npz import load_npz
    from stages.training import hardware
    from stages.training.batch_norm import settle_batch_norm
    from stages.training.presets import PRESETS, Settings, compiled_model

    preset = PRESETS[preset_name]
    settings = Settings.for_preset(preset, epochs=epochs)
    device, scope = hardware.configure(False)
    train = load_npz(paths.prepared_split("train"), ("x", "y"), produced_by="preprocess")
    test = load_npz(paths.prepared_split("test"), ("x", "label"), produced_by="preprocess")
    with scope:
        model = compiled_model(preset, "mnist", settings, len(train["x"]), seed=seed)  # as the pipeline

    class Clock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.started  # the epoch's training only
            self.rows.append({"epoch": epoch + 1, "train_s": seconds, "test_accuracy": accuracy(self.model)})

    def accuracy(model: keras.Model) -> float:
        predicted = model.predict(test["x"], batch_size=1000, verbose=0).argmax(axis=1)
        return float((predicted == test["label"]).mean())

    clock = Clock()
    model.fit(
        train["x"],
        train["y"],
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        verbose=0,
        callbacks=[clock],
    )
    settle_batch_norm(model, train["x"])  # as train ends: the model the pipeline saves
    return {
        "preset": preset_name,
        "seed": seed,
        "device": device,
        "epochs": clock.rows,
        "final_test_accuracy": accuracy(model),
    }


def final_accuracy(run: dict) -> float:
    """The saved model's test accuracy (batch norm settled); older records have only the last epoch's."""
    return run.get("final_test_accuracy", run["epochs"][-1]["test_accuracy"])


def epochs_to(run: dict, target: float) -> int | None:
    """How many epochs the run needed to reach the target. After the last epoch the accuracy is the saved
    model's (batch norm settled): what a training of that length delivers."""
    rows = run["epochs"]
    for number, row in enumerate(rows, start=1):
        accuracy = final_accuracy(run) if number == len(rows) else row["test_accuracy"]
        if accuracy >= target:
            return number
    return None


def time_to(run: dict, target: float) -> float | None:
    """Cumulative training seconds until the first epoch whose test accuracy reaches the target."""
    needed = epochs_to(run, target)
    return None if needed is None else sum(row["train_s"] for row in run["epochs"][:needed])


def summarise(runs: list[dict], target: float) -> str:
    lines = [
        f"| preset | rounds | time to {target:.2%} (median, min-max) | final test accuracy | total training "
        "time (median, min-max) |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    by_preset: dict[str, list[dict]] = {}
    for run in runs:
        by_preset.setdefault(run["preset"], []).append(run)
    totals = {}
    for preset, group in by_preset.items():
        reach = [time_to(r, target) for r in group]
        total = [sum(row["train_s"] for row in r["epochs"]) for r in group]
        totals[preset] = total
        finals = sorted({f"{final_accuracy(r):.2%}" for r in group})
        reached = [t for t in reach if t is not None]
        reach_text = (
            spread(reached, unit=" s")
            + ("" if len(reached) == len(reach) else f", reached in {len(reached)} of {len(reach)}")
            if reached
            else "not reached"
        )
        lines.append(
            f"| {preset} | {len(group)} | {reach_text} | {', '.join(finals)} | {spread(total, unit=' s')} |"
        )
    if "cnn" in by_preset:  # the yardstick: the time of one epoch of the cnn tutorial
        cnn_epochs = [row["train_s"] for r in by_preset["cnn"] for row in r["epochs"]]
        cnn_epoch, cnn_fastest = statistics.median(cnn_epochs), min(cnn_epochs)
        lines.append(f"\ncnn: {cnn_epoch:.1f} s per epoch (median)")
        for preset, group in by_preset.items():
            if preset == "cnn":
                continue
            reach = [time_to(r, target) for r in group]
            in_epochs = [f"{t / cnn_epoch:.2f}" if t is not None else "never" for t in reach]
            lines.append(
                f"{preset}: time to {target:.2%} in cnn epochs, per run (seeds "
                f"{', '.join(str(r.get('seed', 42)) for r in group)}): {', '.join(in_epochs)}"
            )
            # A shared machine has slow phases that halve throughput for whole epochs: the same count
            # again with every epoch at each preset's fastest, so that it says what the work costs.
            fastest = min(row["train_s"] for r in group for row in r["epochs"])
            needed = [epochs_to(r, target) for r in group]
            undisturbed = [f"{n * fastest / cnn_fastest:.2f}" if n else "never" for n in needed]
            lines.append(
                f"{preset}: the same at each preset's fastest epoch ({fastest:.1f} s against cnn's "
                f"{cnn_fastest:.1f} s): {', '.join(undisturbed)} (epochs needed: "
                f"{', '.join(str(n) for n in needed)})"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["fast_cnn", "cnn"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.995)
    parser.add_argument("--quick", action="store_true", help="1 round, 2 epochs per preset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run per seed and round")
    parser.add_argument(
        "--reference-epochs",
        type=int,
        help="train cnn for this many epochs only: its epoch time is the yardstick",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: train this preset
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.epochs, args.seed)))
        return
    rounds, epochs = (1, 2) if args.quick else (args.rounds, None)
    runs = []
    for round_ in range(rounds):
        order = args.presets if round_ % 2 == 0 else list(reversed(args.presets))
        for preset in order:
            preset_epochs = args.reference_epochs if preset == "cnn" and args.reference_epochs else epochs
            extra = ["--epochs", str(preset_epochs)] if preset_epochs else []
            for seed in args.seeds if preset != "cnn" else args.seeds[:1]:
                command = [sys.executable, __file__, "--one", preset, "--seed", str(seed), *extra]
                started = time.monotonic()
                run = child_result(command, preset) | {"round": round_ + 1}
                runs.append(run)
                print(
                    f"round {round_ + 1} {preset} seed {seed}: {time.monotonic() - started:.0f} s in all, "
                    f"final test accuracy {final_accuracy(run):.2%}",
                    flush=True,
                )
    RESULTS.write_text(json.dumps({"target": args.target, "runs": runs}, indent=1) + "\n")
    print(summarise(runs, args.target))


if __name__ == "__main__":
    main()
