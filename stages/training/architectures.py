"""The presets' architectures: the five reference tutorials' exactly, and our own.

Each `build_*` takes the dataset (augmentation that suits it, where there is any) and returns an
uncompiled model. `keras.*` only, so every preset runs on any Keras backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import layers

NUM_CLASSES = 10
INPUT_SHAPE = (28, 28, 1)


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
    """The most accuracy per second of CPU time we found (docs/performance.md). Training sees each digit
    shifted by up to 2 pixels (inside the model, active only while training): the small network would
    otherwise learn the training set's exact positions and stop near 99.4%. The first layer is a narrow
    5x5 convolution with stride 2, so nothing runs at full resolution but it: on a CPU, full-resolution
    activations (and batch norm over them) cost more than the convolutions that follow. Then two
    convolutions with batch norm, 64 and 128 filters, and a small dense head with light dropout."""

    def body(x):
        x = layers.RandomTranslation(2 / 28, 2 / 28, fill_mode="constant", interpolation="nearest")(x)
        x = layers.Conv2D(32, 5, strides=2, padding="same", activation="relu")(x)
        x = _conv_bn(x, 64)
        x = layers.MaxPooling2D(2)(x)
        x = _conv_bn(x, 128)
        x = layers.Flatten()(x)
        x = layers.Dense(128, activation="relu")(x)
        return layers.Dropout(0.1)(x)  # a 4-epoch training needs little: 0.3 ended lower on 1 seed of 3

    return _model("fast_cnn", body)


def _augmentation(dataset: str) -> list[layers.Layer]:
    """Training-time augmentation that keeps the label: small shifts, rotations and zooms for digits
    (a flipped 2 is no 2), small shifts and horizontal flips for clothes (a flipped shoe is a shoe).
    The choice for clothes was measured against the digits' augmentation: docs/performance.md."""
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
