"""The model presets: exact architectures of the tutorials, their stated optimizer settings, overrides."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import keras
import numpy as np
import pytest

from stages.core.config import PresetName, TrainConfig
from stages.training.presets import PRESETS, Settings, make_optimizer

REFERENCE_COUNTS = {
    "mlp": 407_050,
    "mlp_dropout": 669_706,
    "cnn": 600_810,
    "cnn_deep": 675_370,
    "cnn_fashion": 140_682,
}


@pytest.mark.parametrize(("name", "count"), REFERENCE_COUNTS.items())
def test_reference_presets_have_the_tutorials_exact_parameter_counts(name, count):
    preset = PRESETS[name]
    model = preset.build()
    assert model.count_params() == count == preset.expected_params
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)


def test_cnn_deep_conv_layers_match_the_tutorial_summary():
    convs = [layer for layer in PRESETS["cnn_deep"].build().layers if isinstance(layer, keras.layers.Conv2D)]
    assert [layer.count_params() for layer in convs] == [640, 73_856, 295_168]


def test_every_preset_outputs_probabilities():
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    for preset in PRESETS.values():
        probabilities = keras.ops.convert_to_numpy(preset.build()(x, training=False))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_params_schema_lists_exactly_the_presets():
    assert set(typing.get_args(PresetName)) == set(PRESETS)


def test_tutorial_optimizer_settings_are_stated_not_defaulted():
    """Keras 3's defaults differ from the Keras 1/2.2 the tutorials ran on; the presets must not use them."""
    adadelta = make_optimizer(
        PRESETS["cnn"].optimizer, PRESETS["cnn"].learning_rate, **PRESETS["cnn"].optimizer_options
    )
    assert isinstance(adadelta, keras.optimizers.Adadelta)
    assert float(adadelta.learning_rate) == 1.0 and adadelta.epsilon == 1e-8 and adadelta.rho == 0.95
    deep = PRESETS["cnn_deep"]
    adagrad = make_optimizer(deep.optimizer, deep.learning_rate, **deep.optimizer_options)
    assert isinstance(adagrad, keras.optimizers.Adagrad)
    assert adagrad.initial_accumulator_value == 0.0 and float(adagrad.learning_rate) == pytest.approx(0.01)
    assert (PRESETS["cnn_fashion"].epochs, PRESETS["cnn_fashion"].batch_size) == (10, 64)
    assert (PRESETS["mlp_dropout"].epochs, PRESETS["mlp"].epochs, PRESETS["cnn"].epochs) == (20, 5, 12)


def test_params_override_the_preset_and_drop_foreign_optimizer_options():
    defaults = Settings.resolve(PRESETS["cnn_deep"], TrainConfig(model="cnn_deep"))
    assert (defaults.optimizer, defaults.epochs, defaults.batch_size) == ("adagrad", 20, 128)
    assert defaults.optimizer_options == {"initial_accumulator_value": 0.0, "epsilon": 1e-7}
    changed = Settings.resolve(
        PRESETS["cnn_deep"], TrainConfig(model="cnn_deep", optimizer="adam", learning_rate=0.002, epochs=3)
    )
    assert (changed.optimizer, changed.learning_rate, changed.epochs) == ("adam", 0.002, 3)
    assert changed.optimizer_options == {}  # Adagrad's accumulator option means nothing to Adam


@pytest.mark.parametrize("module", ["architectures", "presets", "state", "callbacks"])
def test_model_code_is_backend_neutral(module):
    """The presets use keras.* only, so they also run on the JAX backend (see the GPU benchmark)."""
    tree = ast.parse((Path(__file__).parents[1] / "stages" / "training" / f"{module}.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"tensorflow", "jax", "torch"}


def test_best_cnn_augments_each_dataset_in_a_label_preserving_way():
    """A flipped digit can change its class; a flipped garment cannot: flips only for Fashion-MNIST."""

    def augmentations(dataset):
        model = PRESETS["best_cnn"].build(dataset)
        return {type(layer).__name__ for layer in model.layers if type(layer).__name__.startswith("Random")}

    assert augmentations("mnist") == {"RandomTranslation", "RandomRotation", "RandomZoom"}
    assert augmentations("fashion_mnist") == {"RandomFlip", "RandomTranslation"}
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    model = PRESETS["best_cnn"].build("fashion_mnist")
    assert model.count_params() == PRESETS["best_cnn"].build("mnist").count_params()
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))


SAVE_ONE = """
import sys
from stages.training.presets import PRESETS, Settings, compiled_model
from stages.training.saving import save_model
preset = PRESETS["fast_cnn"]
save_model(compiled_model(preset, "mnist", Settings.for_preset(preset, epochs=1), 1000, seed=1), sys.argv[1])
"""


def test_the_same_weights_saved_by_two_processes_are_the_same_bytes(tmp_path):
    """Keras alone stamps the time and memory addresses into the file: DVC would see a new model."""
    import subprocess
    import sys
    import time

    import keras
    import numpy as np

    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", SAVE_ONE, str(tmp_path / f"{name}.keras")], check=True)
        time.sleep(1.1)  # a later second on the clock
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = keras.saving.load_model(tmp_path / "a.keras", safe_mode=True)
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype("float32")
    assert loaded.predict(x, verbose=0).shape == (2, 10)


def test_the_readmes_presets_table_is_generated_from_the_presets():
    """The README's table is `python -m stages.training.presets README.md`: never typed beside PRESETS."""
    from conftest import REPO

    from stages.core.config import TrainConfig
    from stages.training.presets import README_BEGIN, README_END, markdown_table

    readme = (REPO / "README.md").read_text()
    block = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0]
    assert block == "\n" + markdown_table(TrainConfig.model_fields["model"].default)


SCHEDULES = [("cosine", 1 / 20, 0.01), ("one_cycle", 1 / 5, 0.0)]  # warm-up share, last rate's share


@pytest.mark.parametrize(("schedule", "warmup_share", "last"), SCHEDULES)
def test_the_schedules_warm_up_then_decay(schedule, warmup_share, last):
    from stages.training.presets import learning_rate_for

    steps = 1000
    rate = learning_rate_for(schedule, 0.003, steps)
    warmup = int(steps * warmup_share)
    values = [float(rate(step)) for step in (0, warmup, steps)]
    assert values[0] == pytest.approx(0.0003) and values[1] == pytest.approx(0.003)
    assert values[2] == pytest.approx(0.003 * last, abs=1e-9)
    assert learning_rate_for("constant", 0.003, steps) == 0.003


def test_label_smoothing_is_a_presets_setting_in_its_loss():
    from stages.training.presets import compiled_model

    preset = PRESETS["fast_cnn"]
    model = compiled_model(preset, "mnist", Settings.for_preset(preset), 1000, seed=0)
    assert model.loss.get_config()["label_smoothing"] == preset.label_smoothing == 0.1
    tutorial = compiled_model(PRESETS["cnn"], "mnist", Settings.for_preset(PRESETS["cnn"]), 1000, seed=0)
    assert tutorial.loss.get_config()["label_smoothing"] == 0.0
