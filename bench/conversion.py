"""How much the MNIST-style conversion of `mnist-predict` matters on digits that are not MNIST-made: the
MNIST test digits, scaled 3-6 times, drawn dark on grey, noisy paper somewhere on a 400 x 300 page and
saved as JPEG, as a scan or a photo would be. Each page is read twice, the MNIST way (what mnist-predict
and the served model do) and squeezed straight to 28 x 28 (what mnist-predict did before), and classified
by the repository's model (data/model/model.keras).

    python bench/conversion.py --images 1000

Writes bench/conversion.json: the test accuracy of each reading, and how often it agrees with the
model's class for the original digit.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def page_of(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
    """One digit (uint8, light on dark) as a JPEG page: dark ink about 40 on paper about 200."""
    from PIL import Image

    scale = int(rng.integers(3, 7))
    side = 28 * scale
    digit = 255 - np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC))
    page = np.full((300, 400), 200.0)
    top, left = int(rng.integers(0, 300 - side)), int(rng.integers(0, 400 - side))
    page[top : top + side, left : left + side] = 40 + digit * (160 / 255)
    page += rng.normal(0, 4, page.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(page, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def squeezed(jpeg: bytes) -> np.ndarray:
    """The old reading: grey, straight to 28 x 28, inverted."""
    from PIL import Image

    grey = Image.open(io.BytesIO(jpeg)).convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    return 1 - np.asarray(grey, dtype=np.float32) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "conversion.json")
    args = parser.parse_args()

    import keras

    from stages.serving import digits

    with np.load(ROOT / "data" / "prepared" / "test.npz") as data:
        images, labels = data["x"][: args.images], data["label"][: args.images]
    model = keras.saving.load_model(ROOT / "data" / "model" / "model.keras", safe_mode=True)
    rng = np.random.default_rng(0)
    pages = [page_of((image[..., 0] * 255).round().astype(np.uint8), rng) for image in images]
    readings = {
        "original": images[..., 0],
        "mnist_style": np.stack([digits.read_image(io.BytesIO(page)) for page in pages]),
        "squeezed": np.stack([squeezed(page) for page in pages]),
    }
    classes = {name: model.predict(x[..., None], verbose=0).argmax(axis=1) for name, x in readings.items()}
    result = {
        "images": args.images,
        "model": "data/model/model.keras",
        **{
            name: {
                "test_accuracy": round(float(np.mean(found == labels)), 4),
                "agrees_with_original": round(float(np.mean(found == classes["original"])), 4),
            }
            for name, found in classes.items()
        },
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
