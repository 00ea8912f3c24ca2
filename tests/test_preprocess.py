"""The validation split and the model inputs, on generated labels and images."""

from __future__ import annotations

import numpy as np
import pytest

from stages.core.config import PreprocessConfig
from stages.core.errors import ConfigError
from stages.data.npz import load_npz, save_npz
from stages.data.splits import split_indices, to_model_inputs

# Unbalanced on purpose, like MNIST's classes (5421 fives, 6742 ones)
LABELS = np.repeat(np.arange(10, dtype=np.uint8), [590, 670, 600, 610, 580, 540, 590, 630, 590, 590])
np.random.default_rng(0).shuffle(LABELS)


def test_split_is_stratified_disjoint_ordered_and_seeded():
    train, val = split_indices(LABELS, PreprocessConfig(val_size=500), seed=7)
    assert len(val) == 500 and len(train) == len(LABELS) - 500
    assert not set(train) & set(val)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    overall = np.bincount(LABELS) / len(LABELS)
    np.testing.assert_allclose(np.bincount(LABELS[val], minlength=10) / 500, overall, atol=0.003)
    again = split_indices(LABELS, PreprocessConfig(val_size=500), seed=7)
    other = split_indices(LABELS, PreprocessConfig(val_size=500), seed=8)
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, other[1])


def test_val_size_as_fraction_or_zero():
    _, val = split_indices(LABELS, PreprocessConfig(val_size=0.1), seed=0)
    assert len(val) == round(0.1 * len(LABELS))
    train, val = split_indices(LABELS, PreprocessConfig(val_size=0), seed=0)
    assert len(val) == 0 and len(train) == len(LABELS)


def test_limit_keeps_a_stratified_subset_of_training_images_only():
    train, val = split_indices(LABELS, PreprocessConfig(val_size=500, limit=1000), seed=0)
    assert len(train) == 1000 and len(val) == 500
    assert np.bincount(LABELS[train], minlength=10).min() >= 90


@pytest.mark.parametrize("val_size", [5, len(LABELS) - 5])
def test_val_size_that_cannot_hold_every_class_is_refused(val_size):
    with pytest.raises(ConfigError, match=r"preprocess\.val_size gives"):
        split_indices(LABELS, PreprocessConfig(val_size=val_size), seed=0)


def test_model_inputs_are_scaled_images_and_one_hot_labels():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8).repeat(3, axis=0)
    labels = np.array([0, 9, 4], dtype=np.uint8)
    inputs = to_model_inputs(images, labels)
    assert inputs["x"].shape == (3, 2, 2, 1) and inputs["x"].dtype == np.float32
    np.testing.assert_allclose(inputs["x"][0, :, :, 0], [[0.0, 1.0], [0.2, 0.4]], rtol=1e-6)
    assert inputs["y"].dtype == np.float32
    np.testing.assert_array_equal(inputs["y"].argmax(axis=1), labels)
    np.testing.assert_array_equal(inputs["y"].sum(axis=1), 1.0)
    np.testing.assert_array_equal(inputs["label"], labels)


def test_npz_files_are_byte_reproducible_and_load_back(tmp_path):
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "label": np.array([1, 2, 3], np.uint8)}
    save_npz(tmp_path / "a.npz", arrays)
    save_npz(tmp_path / "b.npz", arrays, compress=False)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = load_npz(tmp_path / "a.npz", ("x", "label"), produced_by="preprocess")
    np.testing.assert_array_equal(loaded["x"], arrays["x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]  # no temporary files left


def test_compressed_npz_files_are_byte_reproducible_smaller_and_load_back(tmp_path):
    pixels = np.zeros((200, 28, 28), np.uint8)
    pixels[:, 10:18, 10:18] = np.arange(200, dtype=np.uint8)[:, None, None]
    arrays = {"x_train": pixels, "y_train": np.arange(200, dtype=np.uint8) % 10}
    for name in ("a.npz", "b.npz"):
        save_npz(tmp_path / name, arrays, compress=True)
    save_npz(tmp_path / "stored.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert (tmp_path / "a.npz").stat().st_size < (tmp_path / "stored.npz").stat().st_size / 10
    loaded = load_npz(tmp_path / "a.npz", ("x_train", "y_train"), produced_by="download")
    for name, array in arrays.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype
