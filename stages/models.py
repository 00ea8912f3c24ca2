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
from keras import layers

if TYPE_CHECKING:
    from stages.config import OptimizerName, TrainConfig
    from stages.config import ScheduleName as Schedule

NUM_CLASSES = 10
INPUT_SHAPE = (28, 28, 1)


@dataclass(frozen=True)
class Preset:
    """An architecture plus the training settings it is known to work with."""

    name: str
    summary: str
    build: Callable[[str], keras.Model]  # takes the dataset: augmentation that suits it, where there is any
    optimizer: OptimizerName
    learning_rate: float
    epochs: int
    batch_size: int
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    schedule: Schedule = "constant"
    early_stopping_patience: int | None = None
    dataset: str = "mnist"  # what the source trained on; any preset trains on either dataset
    reference: str | None = None  # the tutorial it reproduces, if any
    expected_params: int | None = None  # exact, for the reference presets
    published_accuracy: float | None = None  # the tutorial's test accuracy


def _classifier_head(x: keras.KerasTensor) -> keras.KerasTensor:
    """The 10-way softmax, kept in float32 so mixed precision stays numerically safe."""
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="predictions")(x)


def _model(name: str, body: Callable[[keras.KerasTensor], keras.KerasTensor]) -> keras.Model:
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    return keras.Model(inputs, _classifier_head(body(inputs)), name=name)


# ---------------------------------------------------------------------------------------- the tutorials


def build_mlp(dataset: str = "mnist") -> keras.Model:
    def body(x):
        x = layers.Flatten()(x)
        return layers.Dense(512, activation="relu")(x)

    return _model("mlp", body)


def build_mlp_dropout(dataset: str = "mnist") -> keras.Model:
    def body(x):
        x = layers.Flatten()(x)
        x = layers.Dense(512, activation="relu")(x)
        x = layers.Dropout(0.2)(x)
        x = layers.Dense(512, activation="relu")(x)
        return layers.Dropout(0.2)(x)

    return _model("mlp_dropout", body)


def build_cnn(dataset: str = "mnist") -> keras.Model:
    def body(x):
        x = layers.Conv2D(32, 3, activation="relu")(x)
        x = layers.Conv2D(32, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.25)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(128, activation="relu")(x)
        return layers.Dropout(0.5)(x)

    return _model("cnn", body)


def build_cnn_deep(dataset: str = "mnist") -> keras.Model:
    def body(x):
        for filters in (64, 128, 256):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = layers.MaxPooling2D(2)(x)
            x = layers.Dropout(0.5)(x)
        x = layers.Flatten()(x)
        for units in (128, 64, 32):
            x = layers.Dense(units, activation="relu")(x)
        return x

    return _model("cnn_deep", body)


def build_cnn_fashion(dataset: str = "mnist") -> keras.Model:
    def body(x):
        for _ in range(2):
            x = layers.Conv2D(64, 3)(x)
            x = layers.ReLU()(x)
            x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
        return layers.Dense(64)(x)  # no activation, as in the tutorial

    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    logits = layers.Dense(NUM_CLASSES, dtype="float32")(body(inputs))
    outputs = layers.Softmax(dtype="float32", name="predictions")(logits)
    return keras.Model(inputs, outputs, name="cnn_fashion")


# ---------------------------------------------------------------------------------------- our own


def _conv_bn(x: keras.KerasTensor, filters: int, kernel: int = 3, **kwargs: Any) -> keras.KerasTensor:
    x = layers.Conv2D(filters, kernel, use_bias=False, **kwargs)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)  # Keras' 0.99 needs ~500 steps to settle
    return layers.ReLU()(x)


def build_fast_cnn(dataset: str = "mnist") -> keras.Model:
    """Small and quick on a CPU. Two blocks of two valid 3x3 convolutions (24, then 48 filters), each
    block working on a smaller image than the last, then a small dense head. Batch normalisation only in
    the second block: at full resolution its extra passes over the activations cost more CPU time than
    the convolutions themselves (measured), while in the smaller block it is cheap and speeds learning."""

    def body(x):
        x = layers.Conv2D(24, 3, activation="relu")(x)
        x = layers.Conv2D(24, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = _conv_bn(x, 48)
        x = _conv_bn(x, 48)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(128, activation="relu")(x)
        return layers.Dropout(0.3)(x)

    return _model("fast_cnn", body)


def _augmentation(dataset: str) -> list[layers.Layer]:
    """Training-time augmentation that keeps the label: small shifts, rotations and zooms for digits
    (a flipped 2 is no 2), small shifts and horizontal flips for clothes (a flipped shoe is a shoe).
    Measured on Fashion-MNIST (GPU, Keras on JAX, 30 epochs): rotation + zoom 91.85%, shift + flip 93.94%."""
    if dataset == "fashion_mnist":
        return [
            layers.RandomFlip("horizontal"),
            layers.RandomTranslation(2 / 28, 2 / 28, fill_mode="constant", interpolation="nearest"),
        ]
    return [
        layers.RandomTranslation(0.1, 0.1, fill_mode="constant"),
        layers.RandomRotation(0.04, fill_mode="constant"),
        layers.RandomZoom(0.1, fill_mode="constant"),
    ]


def build_best_cnn(dataset: str = "mnist") -> keras.Model:
    """Wider, with augmentation suited to the dataset inside the model (active only while training)."""

    def body(x):
        for augment in _augmentation(dataset):
            x = augment(x)
        for filters in (32, 64):
            x = _conv_bn(x, filters)
            x = _conv_bn(x, filters)
            x = _conv_bn(x, filters, kernel=5, strides=2, padding="same")
            x = layers.Dropout(0.3)(x)
        x = _conv_bn(x, 128, kernel=4)
        x = layers.Flatten()(x)
        return layers.Dropout(0.3)(x)

    return _model("best_cnn", body)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in [
        Preset(
            name="mlp",
            summary="Dense 512 relu -> Dense 10 (Keras getting-started tutorial)",
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
            summary="2 x (Dense 512 relu, Dropout 0.2) -> Dense 10",
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
            summary="2 x Conv 32 -> MaxPool -> Dense 128, dropout (Keras 1 mnist_cnn example)",
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
            summary="3 x (Conv same -> MaxPool -> Dropout 0.5), f = 64/128/256 -> Dense 128/64/32",
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
            summary="2 x (Conv 64 -> ReLU -> MaxPool) -> Dense 64 -> Dense 10 (TensorFlow Fashion-MNIST CNN)",
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
            summary="Ours: 2 x 2 convs (24, then 48 batch-normalised) + Dense 128, cosine schedule",
            build=build_fast_cnn,
            optimizer="adam",
            learning_rate=0.003,
            epochs=8,
            batch_size=128,
            schedule="cosine",
        ),
        Preset(
            name="best_cnn",
            summary="Ours: deeper batch-normalised CNN, augmentation suited to the dataset, cosine schedule",
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
    if schedule == "cosine":
        warmup = max(1, total_steps // 20)
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate / 10,
            decay_steps=max(1, total_steps - warmup),
            warmup_target=learning_rate,
            warmup_steps=warmup,
            alpha=0.01,
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
        )


# Train steps Keras runs per call into the backend: fewer Python round trips. Measured on 2 CPU cores:
# the mlp preset's first epoch 1.92 s -> 1.39 s, CNN presets about the same; the weights are bit-identical.
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
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model
