"""The paired test and the accuracy interval on hand-made tables, against exact arithmetic and scipy's own."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import binomtest

from stages.core.errors import StageError
from stages.evaluation.paired import (
    Predictions,
    accuracy_interval,
    format_p,
    p_clause,
    paired_test,
    verdict,
)


def predictions(right: np.ndarray, *, split: str = "a" * 64, labels: np.ndarray | None = None) -> Predictions:
    """Predictions that are right exactly where `right` is True (wrong answers: the next class)."""
    labels = np.arange(len(right)) % 10 if labels is None else labels
    predicted = np.where(right, labels, (labels + 1) % 10)
    probabilities = np.full((len(right), 10), 0.01)
    probabilities[np.arange(len(right)), predicted] = 0.91
    return Predictions.from_probabilities(probabilities, labels, "mnist/test", split)


def table(both: int, fixes: int, breaks: int, neither: int) -> tuple[Predictions, Predictions]:
    """A challenger and a champion with the given 2 x 2 table of right and wrong answers."""
    challenger = np.array([True] * both + [True] * fixes + [False] * breaks + [False] * neither)
    champion = np.array([True] * both + [False] * fixes + [True] * breaks + [False] * neither)
    return predictions(challenger), predictions(champion)


def exact_two_sided(fixes: int, breaks: int) -> float:
    """The exact McNemar p-value by hand: twice the smaller tail of Binomial(fixes + breaks, 1/2)."""
    n = fixes + breaks
    tail = sum(Fraction(math.comb(n, k), 2**n) for k in range(min(fixes, breaks) + 1))
    return float(min(Fraction(1), 2 * tail))


@pytest.mark.parametrize(("fixes", "breaks"), [(14, 6), (6, 14), (30, 10), (5, 5), (1, 0), (0, 0), (120, 80)])
def test_the_p_value_is_the_exact_mcnemar_tests(fixes, breaks):
    challenger, champion = table(9800, fixes, breaks, 200 - fixes - breaks)
    test = paired_test(challenger, champion)
    assert (len(test.fixed), len(test.broken), test.images) == (fixes, breaks, 10000)
    assert test.p_value == pytest.approx(exact_two_sided(fixes, breaks), rel=1e-9)
    if fixes + breaks:
        assert test.p_value == pytest.approx(binomtest(fixes, fixes + breaks, 0.5).pvalue, rel=1e-12)
    assert test.accuracy_gain == pytest.approx((fixes - breaks) / 10000)


def test_the_issues_example_keeps_the_champion_and_says_why():
    test = paired_test(*table(9900, 14, 6, 80))
    assert format_p(test.p_value) == "0.12"
    rule = verdict(test, alpha=0.05, margin=0.0)
    assert not rule.promote and rule.why == "(p = 0.12 > 0.05)"


@pytest.mark.parametrize(("fixes", "breaks"), [(81, 6603), (6603, 81), (0, 1100)])
def test_a_p_value_too_small_for_a_float_is_never_printed_as_0(fixes, breaks):
    """A retrain job's worse preset broke 6,603 of the champion's right answers and fixed 81: the exact
    tail underflows to 0.0, and "p = 0.0e+00" would say the result could not have happened by chance."""
    test = paired_test(*table(10000 - fixes - breaks, fixes, breaks, 0))
    assert test.p_value == 0.0  # the float, not the p-value
    assert p_clause(test.p_value) == "p < 2.2e-308"
    why = verdict(test, alpha=0.05, margin=0.0).why
    assert "p < 2.2e-308" in why and "p = 0" not in why, why
    assert p_clause(0.12) == "p = 0.12" and p_clause(0.0496, 0.05) == "p = 0.0496"


def test_a_clear_improvement_is_promoted_unless_the_margin_asks_for_more():
    test = paired_test(*table(9700, 120, 20, 160))
    assert verdict(test, alpha=0.05, margin=0.0).promote
    assert verdict(test, alpha=0.05, margin=0.009).promote  # a gain of 1.00 points
    too_small = verdict(test, alpha=0.05, margin=0.01)
    assert not too_small.promote and "not above the margin 1.00%" in too_small.why


@pytest.mark.parametrize("margin", [0.0029, 0.0058, 0.01])
def test_a_gain_exactly_at_the_margin_is_not_above_it(margin):
    gain = round(margin * 10000)  # images: 0.0029 * 10000 is 28.999999999999996 in floating point
    test = paired_test(*table(9000, 20 + gain, 20, 960 - gain))
    assert test.p_value < 0.05 and not verdict(test, alpha=0.05, margin=margin).promote
    assert verdict(paired_test(*table(9000, 21 + gain, 20, 959 - gain)), alpha=0.05, margin=margin).promote


NEAR_ALPHA = [
    (0.0496, 0.05, "0.0496"),
    (0.0503, 0.05, "0.0503"),
    (0.12, 0.05, "0.12"),
    (1e-5, 0.05, "1.0e-05"),
]


@pytest.mark.parametrize(("p", "alpha", "shown"), NEAR_ALPHA)
def test_a_p_value_is_never_printed_as_alpha_itself(p, alpha, shown):
    assert format_p(p, alpha) == shown


def test_a_model_that_breaks_more_than_it_fixes_is_never_promoted():
    test = paired_test(*table(9000, 20, 400, 580))
    assert test.p_value < 1e-50
    rule = verdict(test, alpha=0.05, margin=0.0)
    assert not rule.promote and "fixes no more than it breaks" in rule.why


def test_predictions_of_another_split_are_refused_by_name():
    challenger, champion = table(90, 5, 5, 0)
    other = Predictions(champion.predicted, champion.probability, champion.label, "mnist/test", "b" * 64)
    with pytest.raises(StageError, match=r"different images \(mnist/test aaaaaaaaaaaa\.\.\. against "):
        paired_test(challenger, other)
    relabelled = predictions(np.ones(100, bool), labels=(np.arange(100) + 3) % 10)
    with pytest.raises(StageError, match="different images"):
        paired_test(challenger, relabelled)


@pytest.mark.parametrize(("correct", "images"), [(9952, 10000), (10000, 10000), (0, 10), (870, 1000)])
def test_the_accuracy_interval_is_wilsons(correct, images):
    z = 1.959963984540054
    p = correct / images
    centre = (p + z * z / (2 * images)) / (1 + z * z / images)
    half = z / (1 + z * z / images) * math.sqrt(p * (1 - p) / images + z * z / (4 * images * images))
    low, high = accuracy_interval(correct, images)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert low <= p <= high


def test_predictions_keep_their_bytes_and_content(tmp_path):
    first, _ = table(50, 3, 2, 5)
    first.save(tmp_path / "a.npz")
    first.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = Predictions.load(tmp_path / "a.npz")
    assert (loaded.split, loaded.split_sha256) == ("mnist/test", "a" * 64)
    assert np.array_equal(loaded.predicted, first.predicted) and loaded.accuracy == first.accuracy
    assert loaded.probability.dtype == np.float32 and loaded.predicted.dtype == np.uint8
