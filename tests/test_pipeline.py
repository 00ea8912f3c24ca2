"""Real `dvc repro` on real data, in a fresh copy of the repository, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ran_stages, run, set_params

from stages.data.catalogue import DATASETS
from stages.data.decoders import verify

pytestmark = pytest.mark.slow

MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def check_prepared(repo: Path, n_train: int, n_val: int) -> None:
    for split, n in {"train": n_train, "val": n_val, "test": 10_000}.items():
        with np.load(repo / "data" / "prepared" / f"{split}.npz", allow_pickle=False) as npz:
            x, y, label = npz["x"], npz["y"], npz["label"]
        assert x.shape == (n, 28, 28, 1) and x.dtype == np.float32
        assert x.min() == 0.0 and x.max() == 1.0
        assert y.shape == (n, 10) and y.dtype == np.float32
        assert set(np.unique(y)) == {0.0, 1.0} and np.all(y.sum(axis=1) == 1)
        np.testing.assert_array_equal(y.argmax(axis=1), label)


def test_dvc_repro_fetches_verifies_and_prepares_real_mnist(repo_copy):
    set_params(repo_copy, preprocess={"val_size": 1000, "limit": 2000})

    first = run(["dvc", "repro", "preprocess"], repo_copy)
    assert ran_stages(first.stdout) == ["check_params", "download", "preprocess"]
    assert (
        f"{repo_copy}/stages"
        in run(["python", "-c", "import stages; print(stages.__file__)"], repo_copy).stdout
    )

    with np.load(repo_copy / "data" / "raw" / "mnist.npz", allow_pickle=False) as npz:
        raw = {name: npz[name] for name in npz.files}
    assert verify(DATASETS["mnist"], raw) == dict(DATASETS["mnist"].array_sha256)
    provenance = json.loads((repo_copy / "data" / "raw" / "mnist.provenance.json").read_text())
    assert provenance["arrays"]["x_train"]["sha256"] == DATASETS["mnist"].array_sha256["x_train"]
    check_prepared(repo_copy, n_train=2000, n_val=1000)
    data_metrics = json.loads((repo_copy / "metrics" / "data.json").read_text())
    assert data_metrics["test"]["per_class"] == dict(zip("0123456789", MNIST_TEST_CLASS_COUNTS, strict=True))
    assert data_metrics["train"]["images"] == 2000 and data_metrics["val"]["images"] == 1000
    assert not [p for p in (repo_copy / "data").rglob(".*") if p.name != ".gitignore"]  # no temp files

    second = run(["dvc", "repro", "preprocess"], repo_copy)
    assert ran_stages(second.stdout) == []
    assert "Data and pipelines are up to date" in second.stdout

    set_params(repo_copy, preprocess={"limit": 3000})
    third = run(["dvc", "repro", "preprocess"], repo_copy)
    assert ran_stages(third.stdout) == ["check_params", "preprocess"]
    check_prepared(repo_copy, n_train=3000, n_val=1000)
    assert "up to date" in run(["dvc", "status", "preprocess"], repo_copy).stdout


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs Debian's dataset-fashion-mnist package (.ci/run installs it)",
)
def test_dvc_repro_on_fashion_mnist_from_the_default_chain(repo_copy):
    set_params(repo_copy, data={"dataset": "fashion_mnist"}, preprocess={"val_size": 1000, "limit": 2000})
    run(["dvc", "repro", "preprocess"], repo_copy)
    with np.load(repo_copy / "data" / "raw" / "fashion_mnist.npz", allow_pickle=False) as npz:
        raw = {name: npz[name] for name in npz.files}
    assert verify(DATASETS["fashion_mnist"], raw) == dict(DATASETS["fashion_mnist"].array_sha256)
    check_prepared(repo_copy, n_train=2000, n_val=1000)
    meta = json.loads((repo_copy / "data" / "prepared" / "meta.json").read_text())
    assert meta["class_names"][0] == "T-shirt/top" and meta["dataset"] == "fashion_mnist"
