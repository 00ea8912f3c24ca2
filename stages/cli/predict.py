"""mnist-predict: classify images with the trained model and print each class with its confidence.

    mnist-predict digit.png photo.jpg                        # the local data/model/model.keras
    mnist-predict --model models:/mnist-classifier@champion digit.png
    mnist-predict batch.npz                                  # an array `x` of N x 28 x 28 (x 1) images

Images are turned into what the model was trained on: grey, 28 x 28, values in [0, 1], a light figure on a
dark background (a dark figure on a light background, as most scans are, is inverted; `--invert` decides
otherwise).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import paths
from stages.core.errors import StageError
from stages.core.io import load_model
from stages.core.runner import run_stage
from stages.data.catalogue import DATASETS
from stages.tracking import store

log = logging.getLogger(__name__)

IMAGE_SIZE = (28, 28)


def load_image(path: Path, invert: str = "auto") -> np.ndarray:
    """One image file as a 28 x 28 float32 array in [0, 1], light figure on dark ground."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = image.convert("L")
            if grey.size != IMAGE_SIZE:
                grey = grey.resize(IMAGE_SIZE, Image.Resampling.LANCZOS)
            pixels = np.asarray(grey, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise StageError(f"{path} is not a readable image ({exc})") from exc
    if invert == "yes" or (invert == "auto" and pixels.mean() > 0.5):
        pixels = 1.0 - pixels
    return pixels


def load_batch(path: Path, key: str = "x") -> np.ndarray:
    """The array `key` of an .npz file as N x 28 x 28 float32 in [0, 1] (uint8 input is scaled)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if key not in data:
                raise StageError(f"{path} has no array {key!r} (it has {sorted(data.files)}); pass --key")
            array = data[key]
    except (OSError, ValueError) as exc:
        raise StageError(f"{path} is not a readable .npz file ({exc})") from exc
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != IMAGE_SIZE:
        raise StageError(f"{path}:{key} has shape {array.shape}; expected N x 28 x 28 (x 1)")
    return array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)


class Classifier:
    """A local `.keras` file or an MLflow model URI (`models:/name@alias`, `runs:/id/model`)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.class_names: list[str] = [str(i) for i in range(10)]
        if source.endswith(".keras"):
            if not Path(source).exists():
                raise StageError(f"{source} is missing: run `dvc repro` first, or pass --model")
            self._model = load_model(source)
            self._predict = lambda x: self._model.predict(x, verbose=0)
            meta = paths.prepared_meta()
            if meta.exists():
                self.class_names = json.loads(meta.read_text())["class_names"]
        else:
            import mlflow

            store.connect()
            try:
                self._model = mlflow.pyfunc.load_model(source)
            except Exception as exc:  # MlflowException for an unknown name, alias or run
                raise StageError(f"cannot load the model {source}: {store.describe(exc)}") from exc
            import keras

            keras.utils.disable_interactive_logging()  # the flavour's predict would draw a progress bar
            self._predict = lambda x: np.asarray(self._model.predict(x))
            dataset = _dataset_of(source)
            if dataset in DATASETS:
                self.class_names = list(DATASETS[dataset].class_names)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._predict(images[..., None].astype(np.float32)), dtype=np.float64)


def _dataset_of(uri: str) -> str | None:
    """The dataset the model at `models:/name@alias`, `models:/name/version` or `runs:/id/...` learned."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id = None
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/", 1)[0]
    elif uri.startswith("models:/"):
        name, _, rest = uri.removeprefix("models:/").partition("/")
        name, _, alias = name.partition("@")
        if alias:
            run_id = client.get_model_version_by_alias(name, alias).run_id
        else:
            run_id = client.get_model_version(name, rest).run_id
    return client.get_run(run_id).data.params.get("data.dataset") if run_id else None


def default_model() -> str:
    """The local model if the pipeline has produced one, else the registry's champion."""
    if paths.model_file().exists():
        return str(paths.model_file())
    from stages.core.config import load_params

    params = load_params()
    return f"models:/{params.train.registered_model}@{params.promote.alias}"


def predictions(names: list[str], probabilities: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    best = probabilities.argmax(axis=1)
    return [
        {"input": name, "class": int(k), "label": class_names[k], "confidence": float(probabilities[i, k])}
        for i, (name, k) in enumerate(zip(names, best, strict=True))
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mnist-predict",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="PNG/JPEG images or .npz batches")
    parser.add_argument(
        "--model", help="a .keras file or an MLflow model URI (default: data/model, else the champion)"
    )
    parser.add_argument("--key", default="x", help="the array to read from .npz inputs (default x)")
    parser.add_argument("--invert", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object per input")
    args = parser.parse_args(argv)

    names: list[str] = []
    images: list[np.ndarray] = []
    for path in args.inputs:
        if not path.exists():
            raise StageError(f"{path} does not exist")
        if path.suffix == ".npz":
            batch = load_batch(path, args.key)
            names += [f"{path}[{i}]" for i in range(len(batch))]
            images += list(batch)
        else:
            names.append(str(path))
            images.append(load_image(path, args.invert))
    classifier = Classifier(args.model or default_model())
    results = predictions(names, classifier.probabilities(np.stack(images)), classifier.class_names)
    for result in results:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['input']}: {result['label']} ({result['confidence']:.1%})")


def cli() -> None:
    """Console-script entry point."""
    run_stage(main)


if __name__ == "__main__":
    cli()
