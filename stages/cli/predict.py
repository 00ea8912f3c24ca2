"""mnist-predict: classify images with the trained model and print each class with its confidence.

    mnist-predict digit.png photo.jpg                        # the repository's data/model/model.tflite
    mnist-predict --model models:/mnist-classifier@champion digit.png
    mnist-predict batch.npz                                  # an array `x` of N x 28 x 28 (x 1) images
    mnist-predict batch.npy                                  # or the one array of a .npy file
    mnist-predict --json scan.png                            # one JSON object per image, all probabilities

Image files of any size are converted as MNIST made its digits (grey, inverted if dark on light, contrast
stretched, the ink scaled into 20 x 20 and centred by its centre of mass in 28 x 28); a 28 x 28 file is
only inverted if light, then taken as it is. Every mode and bit depth Pillow opens is read (16-bit and
float grey included); a file of several frames, or of more than 50 megapixels, is refused. Arrays in .npz
and .npy files must be uint8 0-255 or floats in [0, 1], N x 28 x 28 (x 1) or N x 784 (a table is never read
as a picture). Every input gets an answer: a class, a warning instead of a class (a blank page, something
unlike any digit), or an error.
The exit code is 1 if any input failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.errors import StageError
from stages.core.runner import run_stage


def read_input(path: Path, key: str, invert: str) -> tuple[list[str], np.ndarray]:
    """The images of one file (N x 28 x 28 float32) and their names; StageError naming the file."""
    from stages.serving import digits

    if not path.is_file():
        raise StageError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        where = f"{path}:{key}" if suffix == ".npz" else str(path)
        try:
            images = digits.to_model_input(_array(path, key))
        except digits.InputError as exc:
            raise StageError(f"{where}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise StageError(f"{path}: not a readable {suffix} file ({exc})") from exc
        return [f"{path}[{i}]" for i in range(len(images))], images
    try:
        return [str(path)], digits.read_image(path, invert)[None]
    except digits.ImageRefusedError as exc:
        raise StageError(f"{path}: {exc}") from exc
    except (OSError, ValueError) as exc:  # Pillow: UnidentifiedImageError is an OSError
        raise StageError(f"{path}: not a readable image ({exc})") from exc


def _array(path: Path, key: str) -> np.ndarray:
    """The array of a .npy file, or the one named `key` in a .npz (never unpickled: data, not code)."""
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):  # a .npy file, whatever its name says
        return loaded
    with loaded as data:
        if key not in data:
            raise StageError(f"{path}: no array {key!r} (it has {sorted(data.files)}); pass --key")
        return data[key]


class Classifier:
    """A `.tflite` file (LiteRT: no TensorFlow loaded), a `.keras` file or an MLflow model URI
    (`models:/name@alias`, `runs:/id/model`), answering as the served model does."""

    def __init__(self, source: str) -> None:
        if source.endswith(".tflite"):
            from stages.serving.lite import LiteModel

            if not Path(source).is_file():
                raise StageError(f"{source}: no such model file")
            try:
                self._lite = LiteModel(source)
            except (ValueError, RuntimeError) as exc:  # the interpreter's errors, or a damaged file
                raise StageError(f"{source} is corrupt or unreadable ({exc})") from exc
            self.class_names = _class_names_beside(Path(source))
        elif source.endswith(".keras"):
            from stages.core.io import load_model

            self._keras = load_model(source)
            self.class_names = _class_names_beside(Path(source))
        else:
            import mlflow

            from stages.serving.pyfunc import no_type_hint_warning
            from stages.tracking import store

            store.connect()
            try:
                with no_type_hint_warning():
                    self._pyfunc = mlflow.pyfunc.load_model(source)
            except Exception as exc:  # MlflowException for an unknown name, alias or run
                raise StageError(f"cannot load the model {source}: {store.describe(exc)}") from exc
            self.class_names = list((self._pyfunc.model_config or {}).get("class_names", range(10)))

    def answers(self, images: np.ndarray):
        from stages.serving import digits

        if hasattr(self, "_pyfunc"):
            return self._pyfunc.predict(images)
        if hasattr(self, "_lite"):
            return digits.answers(self._lite.probabilities(images), self.class_names, images)
        return digits.answers(self._keras.predict(images[..., None], verbose=0), self.class_names, images)


def _class_names_beside(model: Path) -> list[str]:
    """The class names of the dataset named in the config.json that train saves beside the model."""
    from stages.data.catalogue import DATASETS

    try:
        dataset = json.loads((model.parent / "config.json").read_text())["dataset"]
        return list(DATASETS[dataset].class_names)
    except (OSError, ValueError, KeyError):
        return [str(i) for i in range(10)]


def default_model() -> str:
    """The repository's model if the pipeline produced one (from any folder inside it), else its
    registry's champion; outside a repository there is no default."""
    from stages.core.config import load_params
    from stages.tracking import store

    root = store.repository_root()
    if not (root / "params.yaml").exists():
        raise StageError("no model given and no pipeline here: pass --model (a .keras file or models:/...)")
    if (local := root / "data" / "model" / "model.tflite").exists():
        return str(local)
    params = load_params(root / "params.yaml")
    return f"models:/{params.train.registered_model}@{params.promote.alias}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mnist-predict",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="image files (PNG, JPEG, ...) or .npz batches")
    parser.add_argument(
        "--model",
        help="a .tflite or .keras file, or an MLflow model URI (default: the repository's "
        "data/model/model.tflite, else its registry's champion)",
    )
    parser.add_argument("--key", default="x", help="the array to read from .npz inputs (default x)")
    parser.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="image files: invert them (auto: when mostly light, as scans are)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per input")
    args = parser.parse_args(argv)

    read: list[tuple[list[str], np.ndarray] | str] = []  # per input, in order: its images, or its error
    for path in args.inputs:
        try:
            read.append(read_input(path, args.key, args.invert))
        except StageError as exc:
            read.append(str(exc))
    batches = [entry[1] for entry in read if not isinstance(entry, str)]
    classifier = Classifier(args.model or default_model())
    rows = iter(classifier.answers(np.concatenate(batches)).to_dict(orient="records") if batches else ())
    for entry in read:
        if isinstance(entry, str):
            _print_failure(entry, args.json)
        else:
            for name in entry[0]:
                _print_answer(name, next(rows), classifier.class_names, args.json)
    if any(isinstance(entry, str) for entry in read):
        raise SystemExit(1)


def _print_answer(name: str, row: dict[str, Any], class_names: list[str], as_json: bool) -> None:
    if as_json:
        probabilities = dict(zip(class_names, row["probabilities"], strict=True))
        print(
            json.dumps(
                {
                    "input": name,
                    "label": row["label"],
                    "class": row["class"],
                    "confidence": row["confidence"],
                    "probabilities": probabilities,
                    "warning": row["warning"],
                }
            )
        )
    elif row["warning"]:
        print(f"{name}: no answer ({row['warning']})")
    else:
        print(f"{name}: {row['label']} ({row['confidence']:.1%})")


def _print_failure(error: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"input": error.split(": ", 1)[0], "error": error}))
    print(f"error: {error}", file=sys.stderr)


def cli() -> None:
    """Console-script entry point."""
    run_stage(main, tensorflow=True, command=True)


if __name__ == "__main__":
    cli()
