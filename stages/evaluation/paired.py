"""Two models on the same test images: each image's prediction, the paired (McNemar) test between them,
and a binomial interval for an accuracy. Used by evaluate (it writes the predictions), report (the
comparison with the champion) and `mnist-promote` (the decision), so the rule lives here once.

Two models scored on the same images are paired: only the images one gets right and the other wrong say
which is better. The exact McNemar test asks whether those split evenly; totals alone move on noise (two
trainings that differ only in seed differ by a few images in 10,000).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from stages.core.errors import StageError
from stages.data.npz import load_npz, save_npz

CONFIDENCE = 0.95  # of every accuracy interval shown
_ARRAYS = ("predicted", "probability", "label", "split", "split_sha256")


def content_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """The SHA-256 of a split's images and labels as arrays (shape, type and values), not of a file."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(images), np.ascontiguousarray(labels)):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Predictions:
    """Each test image's predicted class and its probability, with the labels and the split they are of:
    `split` names it (`mnist/test`), `split_sha256` is the content of its images and labels
    (`content_digest`): the same images give the same digest whatever the file's bytes."""

    predicted: np.ndarray
    probability: np.ndarray
    label: np.ndarray
    split: str
    split_sha256: str

    @classmethod
    def from_probabilities(
        cls, probabilities: np.ndarray, labels: np.ndarray, split: str, split_sha256: str
    ) -> Predictions:
        predicted = probabilities.argmax(axis=1)
        return cls(
            predicted=predicted.astype(np.uint8),
            probability=probabilities[np.arange(len(predicted)), predicted].astype(np.float32),
            label=np.asarray(labels).astype(np.uint8),
            split=split,
            split_sha256=split_sha256,
        )

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.label

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    def save(self, dest: Path) -> None:
        """A compact .npz (6 bytes an image), byte-reproducible like every other output."""
        save_npz(
            dest,
            {
                "predicted": self.predicted,
                "probability": self.probability,
                "label": self.label,
                "split": np.array(self.split),
                "split_sha256": np.array(self.split_sha256),
            },
        )

    @classmethod
    def load(cls, path: Path, produced_by: str = "evaluate") -> Predictions:
        arrays = load_npz(path, _ARRAYS, produced_by=produced_by)
        return cls(
            predicted=arrays["predicted"],
            probability=arrays["probability"],
            label=arrays["label"],
            split=str(arrays["split"]),
            split_sha256=str(arrays["split_sha256"]),
        )


@dataclass(frozen=True)
class PairedTest:
    """The challenger against the champion on the same images: the images it fixes (right where the
    champion is wrong), those it breaks, and the exact McNemar test's two-sided p-value."""

    fixed: np.ndarray  # indices into the test split
    broken: np.ndarray
    images: int
    p_value: float
    accuracy_gain: float  # challenger's accuracy minus the champion's

    @property
    def better(self) -> bool:
        return len(self.fixed) > len(self.broken)


def paired_test(challenger: Predictions, champion: Predictions) -> PairedTest:
    """The exact McNemar test: under "equally good", an image that only one model gets right is the
    challenger's with probability 1/2, so the fixes are Binomial(fixes + breaks, 1/2)."""
    from scipy.stats import binomtest

    mine, theirs = challenger.split_sha256, champion.split_sha256
    if mine != theirs or not np.array_equal(challenger.label, champion.label):
        raise StageError(
            f"the two models were tested on different images ({challenger.split} {mine[:12]}... against "
            f"{champion.split} {theirs[:12]}..., by content): "
            "the data or its preprocessing changed between them, so their predictions are not paired. "
            "Train the champion's settings on this data to compare them, or move the alias by hand"
        )
    if not len(challenger.label):
        raise StageError(f"{challenger.split} has no images: rerun `dvc repro preprocess`")
    fixed = np.flatnonzero(challenger.correct & ~champion.correct)
    broken = np.flatnonzero(~challenger.correct & champion.correct)
    discordant = len(fixed) + len(broken)
    p_value = binomtest(len(fixed), discordant, 0.5).pvalue if discordant else 1.0
    return PairedTest(
        fixed=fixed,
        broken=broken,
        images=len(challenger.label),
        p_value=float(p_value),
        accuracy_gain=(len(fixed) - len(broken)) / len(challenger.label),  # from counts: no rounding
    )


@dataclass(frozen=True)
class Verdict:
    promote: bool
    why: str  # "(p = 0.12 > 0.05)" and, where the gain is too small, the margin


def verdict(test: PairedTest, alpha: float, margin: float) -> Verdict:
    """The promotion rule: more fixes than breaks, a p-value under `alpha`, and an accuracy gain above
    `margin` (a minimum effect, 0 by default)."""
    fixes, breaks = len(test.fixed), len(test.broken)
    p = p_clause(test.p_value, alpha)
    if not test.better:
        return Verdict(False, f"({p}; it fixes no more than it breaks)")
    if test.p_value >= alpha:
        relation = ">" if test.p_value > alpha else ">="
        return Verdict(False, f"({p} {relation} {alpha:g})")
    if Fraction(fixes - breaks, test.images) <= Fraction(str(margin)):  # exact: 0.0029 x 10,000 is 29
        return Verdict(
            False,
            f"({p} < {alpha:g}, but a gain of {test.accuracy_gain:.2%} "
            f"({fixes - breaks} images) is not above the margin {margin:.2%})",
        )
    return Verdict(True, f"({p} < {alpha:g})")


def format_p(p: float, alpha: float | None = None) -> str:
    """Two significant digits, or as many more as it takes not to print `alpha` itself for a p-value on
    either side of it (0.0496 is "0.0496", not "0.05 < 0.05")."""
    for digits in range(2, 17):
        text = f"{p:.{digits}g}" if p >= 0.001 else f"{p:.{digits - 1}e}"
        if alpha is None or p == alpha or float(text) != alpha:
            return text
    return repr(p)


def p_clause(p: float, alpha: float | None = None) -> str:
    """The p-value as a clause, "p = 0.12"; "p < 2.2e-308" where the exact tail is too small for a float
    and comes back as 0 (thousands of discordant images, all one way): a p-value is never 0."""
    if p == 0:
        return f"p < {sys.float_info.min:.1e}"
    return f"p = {format_p(p, alpha)}"


def accuracy_interval(correct: int, images: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on `images` test images."""
    from scipy.stats import binomtest

    if images == 0:
        return 0.0, 1.0
    interval = binomtest(correct, images).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)
