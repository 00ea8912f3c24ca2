"""The input rule and the MNIST-style conversion (stages/serving/digits.py), on images drawn here.

MNIST's own statistics, measured on its 60,000 training digits (docs/serving.md): the ink's bounding
box has 20 pixels on its longer side, the centre of mass lies within a pixel of row 14, column 14 (13.5
to 14.5 on each axis), the background is 0, the brightest pixel 1 (to 1/255), and 1.9% to 40% of the
pixels are above 0.5.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from stages.serving import digits


def drawn_seven(
    size: tuple[int, int],
    box: tuple[int, int, int, int],
    ink: int,
    paper: int,
    noise: float = 0.0,
    mode: str = "L",
) -> bytes:
    """A "7" drawn with strokes in `box` on a page of `size`, as a PNG."""
    page = Image.new("L", size, paper)
    draw = ImageDraw.Draw(page)
    left, top, right, bottom = box
    width = max(2, (right - left) // 8)
    draw.line([(left, top), (right, top), (left + (right - left) // 3, bottom)], fill=ink, width=width)
    pixels = np.asarray(page, dtype=np.float64)
    if noise:
        pixels = pixels + np.random.default_rng(0).normal(0, noise, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def assert_like_mnist(digit: np.ndarray) -> None:
    assert digit.shape == (28, 28) and digit.dtype == np.float32
    rows = np.flatnonzero(digit.any(axis=1))
    cols = np.flatnonzero(digit.any(axis=0))
    assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) in (20, 21)  # LANCZOS may ring by one
    centre = digits.centre_of_mass(digit)
    assert np.hypot(centre[0] - 14, centre[1] - 14) <= 1.0, centre  # MNIST: at most 1.41 from (13.5, 13.5)
    assert digit.max() == 1.0 and np.mean(digit == 0) > 0.5
    assert 0.019 <= np.mean(digit > 0.5) <= 0.40
    assert digits.doubts_about(digit[None]) == [None]


PAGES = {
    "off-centre": ((300, 200), (200, 20, 280, 120), 0, 255, 0.0),
    "small": ((300, 300), (140, 140, 152, 156), 0, 255, 0.0),
    "large": ((400, 400), (10, 10, 390, 390), 0, 255, 0.0),
    "grey paper, faint ink, noise": ((240, 180), (60, 40, 120, 140), 110, 200, 6.0),
    "light on dark": ((100, 100), (20, 10, 70, 90), 255, 0, 0.0),
}


@pytest.mark.parametrize("page", PAGES.values(), ids=PAGES.keys())
def test_a_drawn_digit_is_converted_to_what_mnist_digits_look_like(page):
    assert_like_mnist(digits.read_image(io.BytesIO(drawn_seven(*page))))


def test_a_transparent_png_is_laid_on_white_paper():
    grey = Image.open(io.BytesIO(drawn_seven((200, 200), (50, 50, 150, 150), 0, 255)))
    rgba = Image.new("RGBA", grey.size, (0, 0, 0, 0))  # transparent black: convert("L") would be all ink
    rgba.putalpha(Image.fromarray(255 - np.asarray(grey)))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    assert_like_mnist(digits.read_image(io.BytesIO(buffer.getvalue())))


def test_a_28_by_28_image_is_taken_as_it_is():
    pixels = np.zeros((28, 28), np.uint8)
    pixels[4:24, 10:14] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    np.testing.assert_array_equal(digits.read_image(io.BytesIO(buffer.getvalue())), pixels / 255)


@pytest.mark.parametrize("size", [(1, 1), (50, 40)])
def test_a_blank_page_has_no_class_only_a_warning(size):
    blank = io.BytesIO()
    Image.new("L", size, 255).save(blank, "PNG")
    image = digits.read_image(io.BytesIO(blank.getvalue()))
    assert not image.any()
    table = digits.answers(np.full((1, 10), 0.1), list("0123456789"), image[None])
    assert table.loc[0, "class"] is None and table.loc[0, "label"] is None
    assert table.loc[0, "warning"].startswith("no ink")


def test_unlike_any_digit_is_warned_about():
    filled = np.ones((1, 28, 28), np.float32)
    corner = np.zeros((1, 28, 28), np.float32)
    corner[0, :8, :8] = 1
    found = digits.doubts_about(np.concatenate([filled, corner]))
    assert "ink covers 100%" in found[0] and "off centre" in found[1]


GOOD = np.zeros((2, 28, 28), np.uint8)
GOOD[:, 4:24, 12:16] = 255


@pytest.mark.parametrize(
    "values",
    [
        GOOD,
        GOOD[..., None],
        GOOD.reshape(2, 784),
        GOOD / 255.0,
        (GOOD / 255.0).astype(np.float32),
        pd.DataFrame(GOOD.reshape(2, 784)),
        GOOD.tolist(),
    ],
    ids=["uint8", "Nx28x28x1", "Nx784", "float64", "float32", "table", "lists"],
)
def test_every_accepted_layout_gives_the_same_pixels(values):
    np.testing.assert_allclose(digits.to_model_input(values, whole_numbers=True), GOOD / 255.0, atol=1e-7)


REFUSED = [
    (GOOD.astype(np.float32), False, "float pixels from 0 to 255", "divide 0-255 values by 255"),
    (GOOD.astype(np.int64), False, "int64 pixels", "astype('uint8')"),
    (np.full((1, 28, 28), np.nan), False, "784 pixels are NaN", "floats in [0, 1]"),
    (np.full((1, 28, 28), -0.5), False, "float pixels from -0.5", "no negative values"),
    (np.full((1, 28, 28), 300), True, "whole numbers from 300 to 300", "0-255"),
    (np.zeros((0, 28, 28), np.uint8), False, "no images", "N x 784"),
    (np.zeros((3, 5), np.uint8), False, "shape (3, 5)", "N x 28 x 28"),
    (np.zeros((2, 28, 28, 3), np.uint8), False, "shape (2, 28, 28, 3)", "N x 28 x 28 x 1"),
    (np.array([["a"] * 784]), True, "pixels of type <U1 are not numbers", "uint8 0-255"),
    ([[0] * 784, [0] * 783], True, "not all the same size", "N x 784"),
]


@pytest.mark.parametrize(("values", "whole", "cause", "fix"), REFUSED, ids=[r[2] for r in REFUSED])
def test_anything_else_is_refused_with_one_line_naming_the_fix(values, whole, cause, fix):
    with pytest.raises(digits.InputError) as refused:
        digits.to_model_input(values, whole_numbers=whole)
    message = str(refused.value)
    assert cause in message and fix in message and "\n" not in message and len(message) < 200


def test_a_larger_array_is_converted_the_mnist_way():
    page = np.asarray(Image.open(io.BytesIO(drawn_seven((120, 90), (30, 10, 80, 70), 255, 0))))
    converted = digits.to_model_input(page[None])
    assert converted.shape == (1, 28, 28)
    assert_like_mnist(converted[0])


def kaggle_table(rows: int) -> pd.DataFrame:
    """Kaggle digit-recognizer's train.csv layout: a `label` column, then pixel0 ... pixel783."""
    pixels = pd.DataFrame(
        np.tile(GOOD.reshape(2, 784), (rows // 2 + 1, 1))[:rows], columns=[f"pixel{i}" for i in range(784)]
    )
    return pd.concat([pd.Series([7] * rows, name="label"), pixels], axis=1)


TABLES_REFUSED = [
    (kaggle_table(10), "'label'", "drop the 'label' column"),
    (kaggle_table(7), "'label'", "drop the 'label' column"),
    (kaggle_table(10).to_numpy(), "shape (10, 785)", "drop that column"),
    (kaggle_table(3).rename(columns={"label": "digit"}), "shape (3, 785)", "drop that column"),
    (GOOD[0], "shape (28, 28)", "1 x 28 x 28"),
    (np.zeros((120, 90), np.uint8), "shape (120, 90)", "never read as a picture"),
    (pd.DataFrame(np.zeros((12, 400), np.uint8)), "shape (12, 400)", "N x 784"),
]


@pytest.mark.parametrize(
    ("values", "cause", "fix"), TABLES_REFUSED, ids=[cause + fix for _, cause, fix in TABLES_REFUSED]
)
def test_a_table_is_rows_of_784_pixels_never_a_picture(values, cause, fix):
    """Any 2-D array, dataframe or CSV is N x 784; before, one of at least 8 x 8 was read as one image."""
    with pytest.raises(digits.InputError) as refused:
        digits.to_model_input(values, whole_numbers=True)
    message = str(refused.value)
    assert cause in message and fix in message and "\n" not in message and len(message) < 200
