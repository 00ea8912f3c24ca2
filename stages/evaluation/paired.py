"""Two models on the same test images: each image's prediction, the paired (McNemar) test between them,
and a binomial interval for an accuracy. Used by evaluate (it writes the predictions), report (the
comparison with the champion) and `mnist-promote` (the decision), so the rule lives here once.

Two models scored on the same images are paired: only the images one gets right and the other wrong say
which is better. The exact McNemar test asks whether those split evenly; totals alone move on noise (two
trainings that differ only in seed differ by a few images in 10,000).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.core.errors import StageError
from stages.data.npz import load_npz, save_npz

CONFIDENCE = 0.95  # of every accuracy interval shown
_ARRAYS = ("predicted", "probability", "label", "split", "split_md5")


@dataclass(frozen=True)
class Predictions:
    """Each test image's predicted class and its probability, with the labels and the split they are of:
    `split` names it (`mnist/test`), `split_md5` is its prepared .npz file's MD5, as in preprocess's
    meta.json and the MLflow run's `testing` dataset."""

    predicted: np.ndarray
    probability: np.ndarray
    label: np.ndarray
    split: str
    split_md5: str

    @classmethod
    def from_probabilities(
        cls, probabilities: np.ndarray, labels: np.ndarray, split: str, split_md5: str
    ) -> Predictions:
        predicted = probabilities.argmax(axis=1)
        return cls(
            predicted=predicted.astype(np.uint8),
            probability=probabilities[np.arange(len(predicted)), predicted].astype(np.float32),
            label=np.asarray(labels).astype(np.uint8),
            split=split,
            split_md5=split_md5,
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
                "split_md5": np.array(self.split_md5),
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
            split_md5=str(arrays["split_md5"]),
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

    if challenger.split_md5 != champion.split_md5 or not np.array_equal(challenger.label, champion.label):
        raise StageError(
            f"the two models were tested on different images ({challenger.split} md5 "
            f"{challenger.split_md5[:12]}... against {champion.split} md5 {champion.split_md5[:12]}...): "
            "the data or its preprocessing changed between them, so their predictions are not paired"
        )
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
    if not test.better:
        return Verdict(False, f"(p = {format_p(test.p_value)}; it fixes no more than it breaks)")
    if test.p_value >= alpha:
        relation = ">" if test.p_value > alpha else ">="
        return Verdict(False, f"(p = {format_p(test.p_value)} {relation} {alpha:g})")
    if fixes - breaks <= margin * test.images:  # in images: 0.01 of 10,000 is 100, not 100.000000001
        return Verdict(
            False,
            f"(p = {format_p(test.p_value)} < {alpha:g}, but a gain of {test.accuracy_gain:.2%} "
            f"({fixes - breaks} images) is not above promote.margin {margin:.2%})",
        )
    return Verdict(True, f"(p = {format_p(test.p_value)} < {alpha:g})")


def format_p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def accuracy_interval(correct: int, images: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on `images` test images."""
    from scipy.stats import binomtest

    if images == 0:
        return 0.0, 1.0
    interval = binomtest(correct, images).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)
