"""The LiteRT form of a model, which mnist-predict, the served model and evaluate run: the same answers as
the Keras model for every preset, the same bytes for the same weights, and a conversion that is not
faithful refused. train checks the same on the whole test set on every training
(stages/training/saving.py)."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

from stages.core.errors import StageError
from stages.serving.export import save_lite
from stages.serving.lite import TOLERANCE, LiteModel, differences, digest_file, record_digest
from stages.training.presets import PRESETS


def images(n: int = 300) -> np.ndarray:
    return np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_answers_the_same_in_litert(preset, tmp_path):
    keras.utils.set_random_seed(1)
    model = PRESETS[preset].build(PRESETS[preset].dataset)
    path = tmp_path / "model.tflite"
    save_lite(model, tmp_path / "model.keras", path, images())  # raises if not faithful

    expected = model.predict(images(), verbose=0)
    lite = LiteModel(path).probabilities(images()[..., 0])  # N x 28 x 28 is read as N x 28 x 28 x 1
    assert (lite.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert np.abs(lite - expected).max() <= TOLERANCE
    assert LiteModel(path).probabilities(images(1)).shape == (1, 10)  # a batch of one after a large one
    assert LiteModel(path).probabilities(images(0)).shape == (0, 10)


def test_the_same_weights_give_the_same_bytes_in_another_process(tmp_path):
    script = (
        "import sys, keras, numpy as np\n"
        "from stages.training.presets import PRESETS\n"
        "from stages.serving.export import save_lite\n"
        "keras.utils.set_random_seed(3)\n"
        "model = PRESETS['fast_cnn'].build('mnist')\n"
        "save_lite(model, None, sys.argv[1], np.zeros((4, 28, 28, 1), 'float32'))\n"
    )
    for name in ("one.tflite", "two.tflite"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, capture_output=True)
    assert (tmp_path / "one.tflite").read_bytes() == (tmp_path / "two.tflite").read_bytes()


def test_answers_that_differ_are_named():
    expected = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert differences(expected, expected + TOLERANCE / 2) is None
    nudge = np.array([[2 * TOLERANCE, -2 * TOLERANCE], [0, 0]])
    close = differences(expected, expected + nudge)
    assert close is not None and "0 of 2 classes differ" in close and "2.00e-05" in close
    swapped = differences(expected, expected[::-1])
    assert swapped is not None and "2 of 2 classes differ" in swapped
    assert "shape (1, 2)" in differences(expected, expected[:1])


def test_a_near_tie_may_flip_its_class_but_a_real_disagreement_may_not():
    """Float rounding may pick either of two classes whose probabilities are within the tolerance (seen in
    a real training: 1 of 10,000 argmaxes flipped at a 1.4e-6 difference); anything wider is refused."""
    tie = 0.5 - TOLERANCE / 8
    expected = np.array([[0.5, tie, 1 - 0.5 - tie], [0.1, 0.9, 0.0]])
    flipped = expected.copy()
    flipped[0, :2] = [tie - TOLERANCE / 8, 0.5 - TOLERANCE / 8]  # each moved by less than the tolerance
    assert flipped[0].argmax() != expected[0].argmax()
    assert differences(expected, flipped) is None
    apart = np.array([[0.5, 0.5 - 3 * TOLERANCE, 3 * TOLERANCE], [0.1, 0.9, 0.0]])
    pushed = apart.copy()
    pushed[0, :2] = [0.5 - 2 * TOLERANCE, 0.5 - 1 * TOLERANCE]  # a flip across a real margin
    refused = differences(apart, pushed)
    assert refused is not None and "1 of 2 classes differ beyond a near-tie" in refused
    # every probability within the tolerance, but the flip crosses a margin wider than it: refused
    wide = np.array([[0.5, 0.5 - 1.5 * TOLERANCE, 1.5 * TOLERANCE], [0.1, 0.9, 0.0]])
    close = wide.copy()
    close[0, :2] = [0.5 - 0.8 * TOLERANCE, 0.5 - 0.7 * TOLERANCE]
    assert np.abs(close - wide).max() <= TOLERANCE and close[0].argmax() != wide[0].argmax()
    assert "1 of 2 classes differ beyond a near-tie" in (differences(wide, close) or "")


def test_a_model_that_litert_answers_differently_is_refused(tmp_path):
    """A layer whose training and inference answers differ, called in training mode by Keras here, stands
    for a converter that changed the model: train must not save it."""
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)

    class Drifting(keras.Model):
        def predict(self, x, **kwargs):
            return model.predict(x, **kwargs)[:, ::-1]

    drifting = Drifting(inputs, outputs)
    with pytest.raises(StageError, match=r"not faithful: .* classes differ"):
        save_lite(drifting, tmp_path / "model.keras", tmp_path / "model.tflite", images(50))


def test_a_mixed_precision_model_is_converted_as_its_float32_twin(tmp_path):
    """LiteRT has no bfloat16 kernels: the same weights are converted, and checked, computing in float32."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(2)
        model = PRESETS["fast_cnn"].build("mnist")
        save_lite(model, tmp_path / "model.keras", tmp_path / "model.tflite", images(100))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    lite = LiteModel(tmp_path / "model.tflite").probabilities(images(100))
    assert np.abs(lite - model.predict(images(100), verbose=0)).max() < 1e-2  # bfloat16's rounding only


def test_a_model_whose_bytes_changed_after_it_was_written_is_refused(tmp_path):
    """A flatbuffer has no checksum: eight flipped bytes in the weights still load and answer, wrongly. The
    digest written beside it catches them."""
    keras.utils.set_random_seed(1)
    path = tmp_path / "model.tflite"
    save_lite(PRESETS["fast_cnn"].build("mnist"), tmp_path / "model.keras", path, images(10))
    record_digest(path)
    assert digest_file(path).read_text().split()[1] == "model.tflite"  # `sha256sum -c` reads it
    data, middle = bytearray(path.read_bytes()), path.stat().st_size // 2
    data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"SHA-256 is not the one recorded in model\.tflite\.sha256"):
        LiteModel(path)
