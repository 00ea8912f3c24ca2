"""Batch norm settled on the final weights (stages/training/batch_norm.py): each layer's moving statistics
become those of its real inputs, after the layers before it were settled, and a second pass changes
nothing. The pipeline tests show what it is for: a model trained a few dozen steps that reads digits."""

from __future__ import annotations

import keras
import numpy as np

from stages.training.batch_norm import batch_norm_layers, settle_batch_norm
from stages.training.presets import PRESETS


def weights(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def same(first: list[np.ndarray], second: list[np.ndarray]) -> bool:
    return len(first) == len(second) and all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def images(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32)


def test_each_layer_gets_the_statistics_of_its_inputs_once_the_layers_before_it_are_settled():
    keras.utils.set_random_seed(2)
    model = PRESETS["fast_cnn"].build("mnist")
    x = images(700)  # more than one batch, and not a multiple of it
    layers = batch_norm_layers(model)
    assert len(layers) == 2 and settle_batch_norm(model, x, samples=600) == 2
    for layer in layers:  # measured afresh, all at once, on the settled model
        inputs = keras.ops.convert_to_numpy(keras.Model(model.input, layer.input)(x[:600], training=False))
        channels = inputs.reshape(-1, inputs.shape[-1]).astype(np.float64)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), channels.mean(0), rtol=1e-4)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(layer.moving_variance), channels.var(0), rtol=1e-3, atol=1e-7
        )
    before = weights(model)
    settle_batch_norm(model, x, samples=600)
    assert same(before, weights(model))


def test_a_model_without_batch_norm_is_left_alone():
    keras.utils.set_random_seed(2)
    model = PRESETS["cnn"].build("mnist")
    before = weights(model)
    assert settle_batch_norm(model, images(10)) == 0
    assert same(before, weights(model))
