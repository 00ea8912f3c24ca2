"""A checkpoint's fingerprint: the settings in effect (not the params as written), the architecture, the
data and the code DVC declares for the train stage. The killed-run scenarios that use it run for real in
test_killed_training.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO

from stages.core.config import Params
from stages.training import fingerprint
from stages.training.presets import PRESETS, Settings
from stages.training.saving import architecture

META = {
    "dataset": "mnist",
    "content_sha256": "abc",
    "files_md5": {"train": "1", "val": "2", "test": "3"},
    "splits": {"train": 55000},
}


def model_config(params: Params, preset_name: str = "fast_cnn") -> dict:
    """As train saves it beside the model: the settings in effect."""
    settings = Settings.resolve(PRESETS[preset_name], params.train)
    return {
        "preset": preset_name,
        **vars(settings),
        "mixed_precision": params.train.mixed_precision,
        "seed": params.seed,
        "dataset": "mnist",
        "data_content_sha256": "abc",
        "splits": META["splits"],
    }


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A copy of the package and dvc.yaml, as the train stage sees them from the repository root."""
    shutil.copytree(REPO / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def parts(params: Params, model=None, meta=META) -> dict[str, str]:
    return fingerprint.fingerprint(model_config(params), architecture(model) if model else {}, meta)


def test_the_settings_in_effect_count_not_the_params_as_written(checkout):
    """`learning_rate: null` and the preset's own default written out are the same training: resume."""
    written_out = Params.model_validate(
        {"train": {"learning_rate": PRESETS["fast_cnn"].learning_rate, "epochs": PRESETS["fast_cnn"].epochs}}
    )
    assert parts(Params()) == parts(written_out)
    other = Params.model_validate({"train": {"learning_rate": 0.001}})
    assert fingerprint.differences(parts(Params()), parts(other)) == ["settings"]


def test_a_changed_preset_default_changes_the_settings_and_the_code(checkout):
    before = parts(Params())
    presets = checkout / "stages" / "training" / "presets.py"
    presets.write_text(presets.read_text().replace("learning_rate=0.003", "learning_rate=0.002", 1))
    # the changed default, as a fresh process would resolve it
    changed = model_config(Params()) | {"learning_rate": 0.002}
    after = fingerprint.fingerprint(changed, {}, META)
    assert fingerprint.differences(before, after) == ["settings", "code"]


@pytest.mark.parametrize(
    "module",
    [
        "stages/data/npz.py",
        "stages/core/io.py",
        "stages/tracking/store.py",
        "stages/training/architectures.py",
    ],
)
def test_any_declared_module_of_train_changes_the_code_part(checkout, module):
    before = parts(Params())
    (checkout / module).write_text((checkout / module).read_text() + "\n# edited\n")
    assert fingerprint.differences(before, parts(Params())) == ["code"]


# download's, and the served model's (package's): train runs neither
@pytest.mark.parametrize("module", ["stages/data/sources.py", "stages/serving/digits.py"])
def test_a_module_train_does_not_run_leaves_the_code_part_alone(checkout, module):
    before = parts(Params())
    (checkout / module).write_text((checkout / module).read_text() + "\n# edited\n")
    assert parts(Params()) == before


def test_the_architecture_and_the_data_are_parts_of_their_own(checkout):
    import keras

    def model(units: int) -> keras.Model:
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units), keras.layers.Dense(2)])

    assert parts(Params(), model(8)) == parts(Params(), model(8))  # same in a rebuilt model
    assert fingerprint.differences(parts(Params(), model(8)), parts(Params(), model(9))) == ["architecture"]
    other_data = META | {"files_md5": META["files_md5"] | {"train": "9"}}
    assert fingerprint.differences(parts(Params()), parts(Params(), meta=other_data)) == ["data"]
    assert fingerprint.differences(None, parts(Params())) == list(fingerprint.PARTS)


def test_outside_a_pipeline_checkout_the_whole_package_is_the_code(tmp_path, monkeypatch):
    """A benchmark runs `python -m stages.train` in a scratch folder with no dvc.yaml: every module of the
    installed package then stands for the declared code."""
    monkeypatch.chdir(tmp_path)
    root, files = fingerprint.declared_code("train")
    assert Path("stages/train.py") in files and Path("stages/data/sources.py") in files
    assert (root / "stages" / "train.py").is_file()
    assert fingerprint.declared_code_digest("train") == fingerprint.declared_code_digest("train")


def test_the_set_aside_line_names_the_parts_that_differ():
    assert fingerprint.describe(["code"]) == "its code differs from this training's"
    assert fingerprint.describe(["settings", "architecture", "code"]) == (
        "its settings, architecture and code differ from this training's"
    )
