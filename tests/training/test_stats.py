"""training.stats against independent implementations: scipy's Wilson interval, and the score test it inverts."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
from scipy.stats import binomtest

from training.stats import Z_95, wilson_interval


@pytest.mark.parametrize(
    ("successes", "trials"), [(0, 1), (1, 1), (0, 10), (3, 10), (7, 10), (10, 10), (31, 50), (160, 300), (1, 1000)]
)
def test_the_wilson_interval_matches_scipy(successes: int, trials: int) -> None:
    expected = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")

    assert wilson_interval(successes, trials) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_another_confidence_level_through_z() -> None:
    expected = binomtest(7, 20).proportion_ci(confidence_level=0.9, method="wilson")

    assert wilson_interval(7, 20, z=NormalDist().inv_cdf(0.95)) == pytest.approx((expected.low, expected.high))


@pytest.mark.parametrize(("successes", "trials"), [(0.5, 1), (2.5, 4), (6.5, 10), (9.5, 10)])
def test_fractional_successes_give_the_bounds_of_the_score_test(successes: float, trials: int) -> None:
    """Ties count half a win. scipy takes whole successes only; the Wilson bounds are by definition the proportions p
    at which the score statistic |share - p| / sqrt(p (1 - p) / n) equals z, so check that instead."""
    share = successes / trials
    low, high = wilson_interval(successes, trials)

    assert low < share < high
    for bound in (low, high):
        assert abs(share - bound) / math.sqrt(bound * (1 - bound) / trials) == pytest.approx(Z_95)


@pytest.mark.parametrize(("successes", "trials"), [(0, 0), (1, 0), (-1, 5), (6, 5)])
def test_impossible_counts_are_refused(successes: float, trials: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        wilson_interval(successes, trials)
