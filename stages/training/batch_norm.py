"""Batch-norm statistics measured on the final weights ("precise BN", as in pycls and detectron2).

During training each BatchNormalization layer keeps a moving average of its batches' statistics, taken
while the weights were still changing. After thousands of steps that average is close to the truth; after
a few dozen (a smoke run on a thousand images, an early-stopped search trial) it is still mostly its
initial zeros and ones, and the model classifies well in training yet answers one class at inference.
So train replaces the averages by the statistics of the final model's own activations on training
images, each layer measured after the layers before it were settled: the model is deterministic, the same
weights give the same statistics, and long runs lose nothing.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

SAMPLES = 4096  # training images measured: the statistics' error is far below the weights' effect
BATCH = 512


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def settle_batch_norm(model: keras.Model, images: Any, samples: int = SAMPLES) -> int:
    """Set every batch-norm layer's moving mean and variance to those of its inputs on the first `samples`
    `images`, in the order the layers run (inference mode: no dropout, no augmentation). Returns how
    many layers were settled."""
    layers = batch_norm_layers(model)
    sample = np.asarray(images[:samples])
    for layer in layers:
        mean, variance = _input_statistics(keras.Model(model.input, layer.input), sample, layer.axis)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(variance.astype(np.float32))
    return len(layers)


def _input_statistics(probe: keras.Model, images: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (biased, as BatchNormalization's) variance of `probe`'s output, accumulated
    in float64 over batches so that no full-resolution activation of every image is held at once."""
    total = squares = None
    count = 0
    for start in range(0, len(images), BATCH):
        out = keras.ops.convert_to_numpy(probe(images[start : start + BATCH], training=False))
        out = np.moveaxis(out.astype(np.float64), axis, -1).reshape(-1, out.shape[axis])
        total = out.sum(axis=0) if total is None else total + out.sum(axis=0)
        squares = (out**2).sum(axis=0) if squares is None else squares + (out**2).sum(axis=0)
        count += len(out)
    mean = total / count
    return mean, np.maximum(squares / count - mean**2, 0.0)
