"""Model presets: the five reference tutorials, reproduced exactly, and our own faster and better ones.

Each preset fixes an architecture and, as defaults, the training settings its source used. The tutorial
presets state every optimizer setting explicitly, because Keras' defaults have changed since those
tutorials ran (Adadelta's learning rate was 1.0 in Keras 1, Adagrad's accumulator started at 0 in Keras 2.2);
with today's defaults they train far slower and miss their published numbers.

Model code uses `keras.*` only, so the presets run on any Keras backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from stages.training.architectures import (
    build_best_cnn,
    build_cnn,
    build_cnn_deep,
    build_cnn_fashion,
    build_fast_cnn,
    build_mlp,
    build_mlp_dropout,
)

if TYPE_CHECKING:
    from stages.core.config import OptimizerName, TrainConfig
    from stages.core.config import ScheduleName as Schedule


@dataclass(frozen=True)
class Preset:
    """An architecture plus the training settings it is known to work with."""

    name: str
    summary: str  # the architecture in one line, as the README's presets table shows it
    build: Callable[[str], keras.Model]  # takes the dataset: augmentation that suits it, where there is any
    optimizer: OptimizerName
    learning_rate: float
    epochs: int
    batch_size: int
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    schedule: Schedule = "constant"
    early_stopping_patience: int | None = None
    label_smoothing: float = 0.0  # of the one-hot targets in the loss (none in the tutorials)
    dataset: str = "mnist"  # what the source trained on; any preset trains on either dataset
    reference: str | None = None  # the tutorial it reproduces, if any
    expected_params: int | None = None  # exact, for the reference presets
    published_accuracy: float | None = None  # the tutorial's test accuracy


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in [
        Preset(
            name="mlp",
            summary="Dense 512 relu → Dense 10",
            build=build_mlp,
            optimizer="rmsprop",
            learning_rate=0.001,
            epochs=5,
            batch_size=128,
            reference="Keras MLP getting-started tutorial",
            expected_params=407_050,
            published_accuracy=0.9798,
        ),
        Preset(
            name="mlp_dropout",
            summary="2 × (Dense 512 relu, Dropout 0.2) → Dense 10",
            build=build_mlp_dropout,
            optimizer="rmsprop",
            learning_rate=0.001,
            epochs=20,
            batch_size=128,
            reference="Keras mnist_mlp example",
            expected_params=669_706,
            published_accuracy=0.9840,
        ),
        Preset(
            name="cnn",
            summary="2 × Conv 32 → MaxPool → Dropout → Dense 128 → Dropout → Dense 10",
            build=build_cnn,
            optimizer="adadelta",
            learning_rate=1.0,  # Keras 1's default; Keras 3's 0.001 barely trains it
            optimizer_options={"rho": 0.95, "epsilon": 1e-8},
            epochs=12,
            batch_size=128,
            reference="Keras 1 mnist_cnn example",
            expected_params=600_810,
            published_accuracy=0.9925,
        ),
        Preset(
            name="cnn_deep",
            summary="3 × (Conv same → MaxPool → Dropout 0.5), 64/128/256 → Dense 128/64/32 → 10",
            build=build_cnn_deep,
            optimizer="adagrad",
            learning_rate=0.01,  # Keras 2.2's default
            optimizer_options={"initial_accumulator_value": 0.0, "epsilon": 1e-7},  # as Keras 2.2 began
            epochs=20,
            batch_size=128,
            reference="Keras 2.2 deep CNN tutorial",
            expected_params=675_370,
            published_accuracy=0.994,
        ),
        Preset(
            name="cnn_fashion",
            summary="2 × (Conv 64 → ReLU → MaxPool) → Dense 64 → Dense 10 → Softmax",
            build=build_cnn_fashion,
            optimizer="adam",
            learning_rate=0.001,
            epochs=10,
            batch_size=64,
            dataset="fashion_mnist",
            reference="Fashion-MNIST CNN tutorial",
            expected_params=140_682,
            published_accuracy=0.9006,
        ),
        Preset(
            name="fast_cnn",
            summary="shift ±2 px → Conv 32 5×5 stride 2 → Conv-BN 64 → MaxPool → Conv-BN 128 → Dense 128 "
            "→ Dropout 0.1",
            build=build_fast_cnn,
            optimizer="adam",
            learning_rate=0.003,
            epochs=4,
            batch_size=128,
            schedule="one_cycle",
            label_smoothing=0.1,
        ),
        Preset(
            name="best_cnn",
            summary="augmentation in the model (shift, rotate, zoom) → 2 × (2 × Conv-BN + strided Conv-BN) "
            "→ Conv 128",
            build=build_best_cnn,
            optimizer="adam",
            learning_rate=0.003,
            epochs=30,
            batch_size=128,
            schedule="cosine",
        ),
    ]
}


def make_optimizer(
    name: OptimizerName,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    **options: Any,
) -> keras.optimizers.Optimizer:
    """A Keras optimizer by name, with every option stated (see the module docstring for why)."""
    classes: dict[str, type[keras.optimizers.Optimizer]] = {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
        "adadelta": keras.optimizers.Adadelta,
        "adagrad": keras.optimizers.Adagrad,
    }
    return classes[name](learning_rate=learning_rate, **options)


def learning_rate_for(
    schedule: Schedule, learning_rate: float, total_steps: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate (or schedule) to hand the optimizer; `plateau` is a callback, so a constant here."""
    if schedule in ("cosine", "one_cycle"):
        # one_cycle: a fifth of the steps to warm up and a decay to zero, as the speed-run recipes do; a
        # short training spends more of itself at its peak rate and ends with the finest steps
        warmup = max(1, total_steps // (5 if schedule == "one_cycle" else 20))
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate / 10,
            decay_steps=max(1, total_steps - warmup),
            warmup_target=learning_rate,
            warmup_steps=warmup,
            alpha=0.0 if schedule == "one_cycle" else 0.01,
        )
    return learning_rate


@dataclass(frozen=True)
class Settings:
    """The training settings in effect: the preset's, with params.yaml's overrides applied."""

    optimizer: str
    learning_rate: float
    optimizer_options: dict[str, Any]
    epochs: int
    batch_size: int
    schedule: str
    early_stopping_patience: int | None
    label_smoothing: float

    @classmethod
    def for_preset(cls, preset: Preset, epochs: int | None = None) -> Settings:
        """The preset's own settings (for `epochs` if given): what the benchmarks train with. Needs only
        Keras, so a benchmark runs where pydantic and the rest of the pipeline are not installed."""
        return cls(
            optimizer=preset.optimizer,
            learning_rate=preset.learning_rate,
            optimizer_options=dict(preset.optimizer_options),
            epochs=epochs or preset.epochs,
            batch_size=preset.batch_size,
            schedule=preset.schedule,
            early_stopping_patience=preset.early_stopping_patience,
            label_smoothing=preset.label_smoothing,
        )

    @classmethod
    def resolve(cls, preset: Preset, cfg: TrainConfig) -> Settings:
        optimizer = cfg.optimizer or preset.optimizer
        return cls(
            optimizer=optimizer,
            learning_rate=cfg.learning_rate if cfg.learning_rate is not None else preset.learning_rate,
            # the preset's optimizer internals belong to its optimizer: drop them if another is chosen
            optimizer_options=dict(preset.optimizer_options) if optimizer == preset.optimizer else {},
            epochs=cfg.epochs or preset.epochs,
            batch_size=cfg.batch_size or preset.batch_size,
            schedule=cfg.schedule or preset.schedule,
            early_stopping_patience=cfg.early_stopping_patience or preset.early_stopping_patience,
            label_smoothing=preset.label_smoothing,
        )


# Train steps Keras runs per call into the backend: fewer Python round trips, bit-identical weights
# (docs/performance.md has the measurement).
STEPS_PER_EXECUTION = 32


def compiled_model(
    preset: Preset,
    dataset: str,
    settings: Settings,
    n_train: int,
    steps_per_execution: int = STEPS_PER_EXECUTION,
    *,
    seed: int | None = None,
) -> keras.Model:
    """The preset's model for `dataset`, compiled with `settings` (a schedule spans all training steps).

    With `seed`, every RNG (Python's, NumPy's, the backend's) is seeded immediately before the build, so
    the initial weights depend on the seed alone, never on what ran earlier in the process.
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    model = preset.build(dataset)
    steps = settings.epochs * int(np.ceil(n_train / settings.batch_size))
    learning_rate = learning_rate_for(settings.schedule, settings.learning_rate, steps)
    model.compile(
        optimizer=make_optimizer(settings.optimizer, learning_rate, **settings.optimizer_options),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model


# ------------------------------------------------------------------------------------ the README's table

OPTIMIZER_NAMES = {
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "adadelta": "Adadelta",
    "adagrad": "Adagrad",
}
SCHEDULE_NAMES = {
    "constant": "",
    "cosine": "warm-up + cosine",
    "one_cycle": "one-cycle (warm-up + cosine to 0)",
    "plateau": "halved on plateau",
}
README_BEGIN, README_END = "<!-- presets:begin -->", "<!-- presets:end -->"


def _optimizer_text(preset: Preset) -> str:
    options = ", ".join(
        f"{key.removesuffix('_value').replace('_', ' ')} {value:g}"
        for key, value in preset.optimizer_options.items()
    )
    schedule = SCHEDULE_NAMES[preset.schedule]
    smoothing = f"label smoothing {preset.label_smoothing:g}" if preset.label_smoothing else ""
    first = f"{OPTIMIZER_NAMES[preset.optimizer]} {preset.learning_rate:g}"
    return ", ".join(part for part in (first, options, schedule, smoothing) if part)


def markdown_table(default: str) -> str:
    """The README's presets table, from PRESETS and the built models (their parameter counts)."""
    rows = [
        "| preset | from | architecture | parameters | optimizer | epochs | batch |",
        "| --- | --- | --- | ---: | --- | ---: | ---: |",
    ]
    for preset in PRESETS.values():
        name = f"`{preset.name}`"
        if preset.reference is None:
            name = f"**{name}**" + (" (default)" if preset.name == default else "")
        parameters = preset.build(preset.dataset).count_params()
        cells = [
            name,
            preset.reference or "ours",
            preset.summary,
            f"{parameters:,}",
            _optimizer_text(preset),
            str(preset.epochs),
            str(preset.batch_size),
        ]
        rows.append(f"| {' | '.join(cells)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m stages.training.presets README.md: rewrite its presets table
    import sys
    from pathlib import Path

    from stages.core.config import TrainConfig

    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    before, _, rest = readme.read_text(encoding="utf-8").partition(README_BEGIN)
    _, _, after = rest.partition(README_END)
    if not rest:
        sys.exit(f"{readme} has no {README_BEGIN} ... {README_END} block")
    table = markdown_table(TrainConfig.model_fields["model"].default)
    readme.write_text(f"{before}{README_BEGIN}\n{table}{README_END}{after}", encoding="utf-8")
