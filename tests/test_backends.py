"""The presets are `keras.*` only, so they run on Keras's JAX backend too: the GPU benchmark trains them
there, a model the pipeline saved under TensorFlow can be served from JAX, and `KERAS_BACKEND=jax dvc repro`
runs the whole pipeline. All checked for real, each backend in its own process (Keras picks its backend
once, at import)."""

from __future__ import annotations

import importlib.metadata
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL, client_for, copy_repository, run, run_id_of, set_params

from stages.training.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]

# Under TensorFlow: each preset trains one epoch on a few images (so BatchNorm's moving statistics and
# every weight differ from their initial values) and is saved as the train stage saves it.
_TRAIN_AND_SAVE = """
import json, sys
from pathlib import Path
import keras, numpy as np
from stages.training.presets import PRESETS, Settings, compiled_model
out = Path(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.random((64, 28, 28, 1), dtype=np.float32)
y = keras.utils.to_categorical(rng.integers(0, 10, 64), 10)
for name, preset in PRESETS.items():
    keras.utils.set_random_seed(1)
    model = compiled_model(preset, "mnist", Settings.for_preset(preset, epochs=1), len(x))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.save(out / f"{name}.keras")
    np.save(out / f"{name}.npy", model.predict(x, verbose=0))
print(json.dumps({"backend": keras.backend.backend()}))
"""

# Under JAX: every saved model loads (safe mode, as evaluate and predict load it) and predicts; every
# preset also builds, compiles and trains from scratch, and its weights move.
_LOAD_AND_TRAIN = """
import json, sys
from pathlib import Path
import keras, numpy as np
from stages.core.io import load_model
from stages.training.presets import PRESETS, Settings, compiled_model
out = Path(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.random((64, 28, 28, 1), dtype=np.float32)
y = keras.utils.to_categorical(rng.integers(0, 10, 64), 10)
report = {"backend": keras.backend.backend(), "presets": {}}
for name, preset in PRESETS.items():
    loaded = load_model(out / f"{name}.keras")
    difference = float(np.abs(loaded.predict(x, verbose=0) - np.load(out / f"{name}.npy")).max())
    keras.utils.set_random_seed(1)
    model = compiled_model(preset, "mnist", Settings.for_preset(preset, epochs=2), len(x))
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0).history
    moved = sum(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    probabilities = model.predict(x, verbose=0)
    report["presets"][name] = {
        "tf_vs_jax_max_difference": difference,
        "losses": history["loss"],
        "weights_moved": moved,
        "weights": len(before),
        "row_sums": [float(probabilities.sum(axis=1).min()), float(probabilities.sum(axis=1).max())],
    }
print(json.dumps(report))
"""


def _run(script: str, backend: str, folder: Path) -> dict:
    env = {"KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    done = run([sys.executable, "-c", textwrap.dedent(script), str(folder)], folder, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_preset_trains_on_jax_and_a_model_saved_under_tensorflow_predicts_the_same_there(tmp_path):
    assert _run(_TRAIN_AND_SAVE, "tensorflow", tmp_path)["backend"] == "tensorflow"
    report = _run(_LOAD_AND_TRAIN, "jax", tmp_path)

    assert report["backend"] == "jax"
    assert set(report["presets"]) == set(PRESETS)
    for name, result in report["presets"].items():
        # the same weights give the same probabilities on either backend (float32 rounding only)
        assert result["tf_vs_jax_max_difference"] < 1e-4, name
        assert all(np.isfinite(result["losses"])), name
        # JAX's gradients reach every weight, and BatchNorm's moving statistics update too
        assert result["weights_moved"] == result["weights"], name
        assert result["row_sums"][0] == pytest.approx(1, abs=1e-4), name
        assert result["row_sums"][1] == pytest.approx(1, abs=1e-4), name


@pytest.mark.slow
def test_the_whole_pipeline_runs_on_jax_and_its_model_evaluates_the_same_under_tensorflow(tmp_path):
    repo = copy_repository(tmp_path / "repo")
    set_params(repo, **SMALL)
    output = run(["dvc", "repro"], repo, env={"KERAS_BACKEND": "jax"}).stderr
    assert "with the jax backend" in output
    on_jax = json.loads((repo / "metrics" / "eval.json").read_text())["test"]
    assert on_jax["accuracy"] > 0.7  # it learned: 1,000 images, 2 epochs

    import mlflow

    client = client_for(repo)
    tags = client.get_run(run_id_of(repo)).data.tags
    assert tags["keras.backend"] == "jax"
    assert tags["version.jax"] == importlib.metadata.version("jax")
    from stages.tracking.registry import logged_model

    model = logged_model(run_id_of(repo))
    requirements = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model.artifact_location}/requirements.txt", dst_path=str(tmp_path)
        )
    ).read_text()
    # what `mlflow models serve` installs to run it: the LiteRT runtime, neither JAX nor TensorFlow
    assert f"ai-edge-litert=={importlib.metadata.version('ai-edge-litert')}" in requirements
    assert "jax" not in requirements and "tensorflow" not in requirements
    assert "on jax" in (repo / "data" / "report" / "report.md").read_text()

    # the model file is Keras's own format: TensorFlow reads the JAX-trained model, and it answers as the
    # LiteRT form that train converted from it and evaluate ran
    import keras

    from stages.serving.lite import TOLERANCE, LiteModel, differences

    assert keras.backend.backend() == "tensorflow"
    with np.load(repo / "data" / "prepared" / "test.npz") as test:
        images = test["x"]
    saved = keras.saving.load_model(repo / "data" / "model" / "model.keras")
    on_tensorflow = saved.predict(images, verbose=0)
    lite = LiteModel(repo / "data" / "model" / "model.tflite").probabilities(images)
    assert differences(on_tensorflow, lite) is None  # package's own rule: near-ties may flip, nothing else
    assert np.abs(on_tensorflow - lite).max() <= TOLERANCE
