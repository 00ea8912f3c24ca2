"""Digits in, classes out: the one place where an image file or an array becomes what the model reads, and
the MLflow model that serves it.

The input rule, everywhere (CLI, Python, served model): pixels are uint8 0-255 or floats in [0, 1]; JSON
and CSV have no uint8, so there whole numbers 0-255 count as 8-bit pixels. A table (any 2-D array, a
DataFrame, CSV) is N images x 784 pixels, one image per row; an N x H x W (x 1) tensor is N images. Anything
else (a table of another width, NaN, a colour channel) is refused with one line naming the fix: a table is
never read as a picture, so a Kaggle `train.csv` with its `label` column is refused, not drawn.

A raw image of another size comes from an image file or an explicit N x H x W tensor; it is converted the
way MNIST was made: grey, light figure on a dark ground, contrast stretched so paper is 0 and ink 1, the
ink's bounding box scaled into 20 x 20 keeping its aspect, then placed so its centre of mass is at the
centre of 28 x 28. A 28 x 28 array is taken as already in that form; a 28 x 28 image file is only made
light on dark (see `read_image`).

This module and stages/serving/pyfunc.py import only numpy, pandas, Pillow, Keras and MLflow, on purpose:
they are pickled by value into each logged model, so `mlflow models serve` needs nothing of this project.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

SIDE = 28  # MNIST images are 28 x 28 ...
BOX = 20  # ... with the ink's bounding box scaled into 20 x 20
CENTRE = 14.0  # where MNIST digits' centre of mass lies (row and column), to half a pixel
MIN_SIDE = 8  # an array smaller than this is no image, but a mistake
MIN_CONTRAST = 0.1  # ink less than this above the paper: no ink at all
NOISE = 0.1  # after stretching, paper texture below this is paper
INK = 0.5  # a pixel this bright counts as ink in the checks below
MNIST_MAX_INK = 0.40  # no MNIST training digit has more of its pixels above INK
MAX_OFF_CENTRE = 3.0  # pixels; MNIST digits are within 1.5

PIXEL_RULE = "pixels must be uint8 0-255 (whole numbers 0-255 in JSON or CSV) or floats in [0, 1]"
LAYOUTS = "N x 28 x 28, N x 28 x 28 x 1 or N x 784 (a table of 784 pixel columns)"
LABEL_COLUMNS = {"label", "labels", "class", "target", "y"}  # what data sets call the answer column


class InputError(ValueError):
    """An input the model must not classify, with what to do instead."""


def as_pixels(values: Any, *, whole_numbers: bool = False) -> np.ndarray:
    """`values` as N x H x W float32 in [0, 1], by the input rule; InputError otherwise.

    `whole_numbers`: accept integers of any type as 0-255 (JSON and CSV, which have no uint8); an .npz
    file's int64 is refused instead, since its author chose that type and may mean anything by it.
    """
    if isinstance(values, pd.DataFrame):
        _check_table_columns(values)
        values = values.to_numpy()
    if isinstance(values, dict):
        raise InputError(f"named inputs {sorted(values)}: send one unnamed array of images ({LAYOUTS})")
    try:
        array = np.asarray(values)
        if array.dtype == object:  # lists from JSON, or a mixed table
            array = np.asarray(array.tolist())
    except ValueError as exc:  # ragged lists
        raise InputError(f"the images are not all the same size: send {LAYOUTS}") from exc
    array = _layout(array)
    kind = array.dtype.kind
    if kind == "u" and array.dtype.itemsize == 1:
        return array.astype(np.float32) / 255.0
    if kind in "iu" and whole_numbers:
        if array.min() < 0 or array.max() > 255:
            raise InputError(f"whole numbers from {array.min()} to {array.max()}: {PIXEL_RULE}")
        return array.astype(np.float32) / 255.0
    if kind in "iu":
        raise InputError(f"{array.dtype} pixels: {PIXEL_RULE}; convert with x.astype('uint8') or x / 255")
    if kind != "f":
        raise InputError(f"pixels of type {array.dtype} are not numbers: {PIXEL_RULE}")
    if not np.isfinite(array).all():
        raise InputError(f"{int((~np.isfinite(array)).sum())} pixels are NaN or infinite: {PIXEL_RULE}")
    low, high = float(array.min()), float(array.max())
    if low < -1e-6 or high > 1 + 1e-6:
        fix = "divide 0-255 values by 255" if high > 1 else "no negative values"
        raise InputError(f"float pixels from {low:g} to {high:g}: {PIXEL_RULE} ({fix})")
    return np.clip(array, 0, 1).astype(np.float32)


def _check_table_columns(table: pd.DataFrame) -> None:
    """A frame with a `label` column is a labelled data set (Kaggle's digit-recognizer layout): say so."""
    named = [str(column) for column in table.columns if str(column).strip().lower() in LABEL_COLUMNS]
    if named:
        raise InputError(
            f"{table.shape[1]} columns, among them {named[0]!r}: drop the {named[0]!r} column and send "
            f"the {SIDE * SIDE} pixel columns only"
        )


def _layout(array: np.ndarray) -> np.ndarray:
    """N x H x W from any of the accepted layouts: a table is rows of 784 pixels, a tensor is images."""
    if array.size == 0:
        raise InputError(f"no images: send {LAYOUTS}")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    elif array.ndim == 2:
        array = _table_rows(array)
    elif array.ndim == 1 and array.shape[0] == SIDE * SIDE:
        array = array.reshape(1, SIDE, SIDE)
    if array.ndim != 3 or min(array.shape[1:]) < MIN_SIDE:
        raise InputError(f"shape {array.shape}: expected {LAYOUTS}")
    return array


def _table_rows(table: np.ndarray) -> np.ndarray:
    """The images of a table, one per row of 784 pixels; any other width is refused, never drawn."""
    width = table.shape[1]
    if width == SIDE * SIDE:
        return table.reshape(-1, SIDE, SIDE)
    if width == SIDE * SIDE + 1:
        fix = "785 columns are 784 pixels and one more (a label?): drop that column"
    elif table.shape == (SIDE, SIDE):
        fix = "one 28 x 28 image: send it as a 1 x 28 x 28 tensor, or as one row of 784 pixels"
    else:
        fix = f"expected {LAYOUTS}; a table is never read as a picture (send the image file)"
    raise InputError(f"shape {table.shape}: {fix}")


def to_model_input(values: Any, *, whole_numbers: bool = False) -> np.ndarray:
    """N x 28 x 28 float32, what the model reads: 28 x 28 pixels as they are, larger or smaller images
    (all of one size) converted the MNIST way."""
    pixels = as_pixels(values, whole_numbers=whole_numbers)
    if pixels.shape[1:] == (SIDE, SIDE):
        return pixels
    return np.stack([mnist_style(light_on_dark(image)) for image in pixels])


MAX_PIXELS = 50_000_000  # an image file larger than this is refused (a 50-megapixel photo still passes)
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 16- and 32-bit integer grey, float grey
_FULL_SCALES = (1.0, 255.0, 65535.0, 2.0**31 - 1)  # white at 1, 8, 16 bits, or in mode I (signed 32)


class ImageRefusedError(ValueError):
    """A readable image file that is no single digit: several frames, or far too many pixels."""


def read_image(path: Any, invert: str = "auto") -> np.ndarray:
    """An image file (any size, mode and bit depth) as a 28 x 28 float32 MNIST-style digit. OSError if
    unreadable; ImageRefusedError, naming the fix, for a file of several frames or over MAX_PIXELS pixels."""
    import warnings

    from PIL import Image

    refusal = f"is over the limit of {MAX_PIXELS:,}: scale it down (a digit needs no more than a few hundred "
    with warnings.catch_warnings():  # Pillow's warning (at 89 megapixels) is replaced by our lower limit
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError:  # Pillow refuses twice its limit before reading the size
            raise ImageRefusedError(
                f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels {refusal}pixels a side)"
            ) from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageRefusedError(f"{width} x {height} pixels {refusal}pixels a side)")
        if getattr(image, "n_frames", 1) > 1:
            raise ImageRefusedError(
                f"it holds {image.n_frames} frames (pages or animation): save the one to classify on its own"
            )
        image.load()
        grey = grey_levels(image)
    grey = light_on_dark(grey, invert)
    return grey if grey.shape == (SIDE, SIDE) else mnist_style(grey)


def grey_levels(image: Any) -> np.ndarray:
    """A Pillow image of any mode as grey levels in [0, 1] (float32), by its own bit depth: a 16-bit
    scan keeps its ink (Pillow's conversion to 8-bit grey clips it white), 8-bit values in a wider mode
    stay 8-bit, a float image in [0, 1] or 0-255 is read as such, and transparent means paper, so it is
    laid on white."""
    from PIL import Image

    if image.mode in _WIDE_MODES:  # white is the smallest full scale that holds every value
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scales = _FULL_SCALES if image.mode == "F" else _FULL_SCALES[1:]  # 1.0 is white only for floats
        white = next((w for w in scales if values.max() <= w), float(values.max()))
        return np.clip(values / white, 0, 1).astype(np.float32)
    if image.mode == "LAB":  # Pillow converts LAB to nothing else; its L band is the lightness
        image = image.getchannel("L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        image = image.convert("RGBA")  # transparent means paper: lay it on white
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def light_on_dark(grey: np.ndarray, invert: str = "auto") -> np.ndarray:
    """A light figure on a dark ground, as MNIST's: most scans are the opposite, and are inverted."""
    if invert == "yes" or (invert == "auto" and float(grey.mean()) > 0.5):
        return 1.0 - grey
    return grey


def mnist_style(grey: np.ndarray) -> np.ndarray:
    """A light-on-dark image of any size as MNIST made its digits (see the module's docstring)."""
    from PIL import Image

    paper, ink = float(np.median(grey)), float(grey.max())
    if ink - paper < MIN_CONTRAST:
        return np.zeros((SIDE, SIDE), np.float32)  # nothing written: `doubts_about` says so
    stretched = np.clip((grey - paper) / (ink - paper), 0, 1).astype(np.float32)
    stretched[stretched < NOISE] = 0
    rows = np.flatnonzero((stretched >= INK / 2).any(axis=1))
    cols = np.flatnonzero((stretched >= INK / 2).any(axis=0))
    crop = stretched[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    patch = np.clip(np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS)), 0, 1)
    patch = patch / patch.max()
    centre_row, centre_col = centre_of_mass(patch)
    top = int(np.clip(round(CENTRE - centre_row), 0, SIDE - patch.shape[0]))
    left = int(np.clip(round(CENTRE - centre_col), 0, SIDE - patch.shape[1]))
    digit = np.zeros((SIDE, SIDE), np.float32)
    digit[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
    return digit


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(image.shape)
    total = float(image.sum())
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def doubts_about(images: np.ndarray) -> list[str | None]:
    """Why an image is unlike anything the model learned from, so that its class means little; or None."""
    found: list[str | None] = []
    for image in images:
        ink = float((image > INK).mean())
        if ink == 0 or float(image.max()) < INK / 2:
            found.append("no ink: the image is blank")
        elif ink > MNIST_MAX_INK:
            found.append(
                f"ink covers {ink:.0%} of the image (MNIST digits: at most {MNIST_MAX_INK:.0%}); "
                "not a digit, or dark ink on light paper given as is"
            )
        elif (off := float(np.hypot(*np.subtract(centre_of_mass(image), CENTRE)))) > MAX_OFF_CENTRE:
            found.append(
                f"the figure is {off:.1f} px off centre (MNIST digits: under 1.5); give the image file, "
                "which is converted the MNIST way"
            )
        else:
            found.append(None)
    return found


def answers(probabilities: np.ndarray, class_names: list[str], images: np.ndarray) -> pd.DataFrame:
    """One row per image: class, label, confidence, every class's probability, and a warning (then no
    class is given: a blank page must not come back as a confident 1)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    best = probabilities.argmax(axis=1)
    doubts = doubts_about(images)
    return pd.DataFrame(
        {
            # object columns: a warned image's missing class stays None (JSON null), not NaN
            "class": pd.Series(
                [None if w else int(k) for k, w in zip(best, doubts, strict=True)], dtype=object
            ),
            "label": pd.Series(
                [None if w else class_names[k] for k, w in zip(best, doubts, strict=True)], dtype=object
            ),
            "confidence": probabilities[np.arange(len(best)), best],
            "probabilities": [[float(p) for p in row] for row in probabilities],
            "warning": pd.Series(doubts, dtype=object),
        }
    )
