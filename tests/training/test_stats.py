"""training.stats against independent implementations: scipy's Wilson interval, and the score test it inverts; the
canary's sequential test against Wald's boundary lines in counts, scipy's binomial, and a simulation."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from training.stats import Z_95, WinRateTest, wilson_interval


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


# --- The canary's sequential test --------------------------------------------------------------------------------

DEFAULTS = {"null_win_rate": 0.45, "target_win_rate": 0.55, "alpha": 0.05, "beta": 0.1, "min_votes": 20}


def wald_lines(p0: float, p1: float, alpha: float, beta: float, votes: int) -> tuple[float, float]:
    """Wald's acceptance and rejection numbers for a Bernoulli SPRT, in wins, as textbooks state them (Wald 1947,
    NIST/SEMATECH handbook): accept H0 at or below s n - h0, accept H1 at or above s n + h1."""
    denominator = math.log(p1 * (1 - p0) / (p0 * (1 - p1)))
    h0 = math.log((1 - alpha) / beta) / denominator
    h1 = math.log((1 - beta) / alpha) / denominator
    slope = math.log((1 - p0) / (1 - p1)) / denominator
    return slope * votes - h0, slope * votes + h1


@pytest.mark.parametrize(
    ("p0", "p1", "alpha", "beta"), [(0.45, 0.55, 0.05, 0.1), (0.4, 0.7, 0.05, 0.1), (0.3, 0.5, 0.01, 0.2)]
)
def test_the_decisions_follow_walds_boundary_lines_in_wins(p0: float, p1: float, alpha: float, beta: float) -> None:
    test = WinRateTest(null_win_rate=p0, target_win_rate=p1, alpha=alpha, beta=beta, min_votes=1, max_votes=10**6)
    seen = set()
    for votes in range(1, 150):
        accept_at_most, reject_at_least = wald_lines(p0, p1, alpha, beta, votes)
        for wins in range(votes + 1):
            expected = True if wins >= reject_at_least - 1e-9 else False if wins <= accept_at_most + 1e-9 else None
            assert test.verdict(wins, votes) is expected, (wins, votes)
            seen.add(expected)
    assert seen == {True, False, None}  # both bounds and the space between were reached
    slope = wald_lines(p0, p1, alpha, beta, 1)[0] - wald_lines(p0, p1, alpha, beta, 0)[0]
    assert test.midpoint == pytest.approx(slope)


def test_the_edges_one_vote_apart() -> None:
    test = WinRateTest(**DEFAULTS, max_votes=200)
    # 0.2007 per win, -0.2007 per loss: the upper bound 2.890 is 15 wins ahead, the lower -2.251 is 12 losses ahead.
    assert test.verdict(34.5, 55) is None and test.verdict(35, 55) is True  # 14 then 15 wins ahead
    assert test.verdict(14, 39) is None and test.verdict(13.5, 39) is False  # 11 then 12 losses ahead
    assert test.verdict(19, 19) is None  # all wins, but before the minimum
    assert test.verdict(20, 20) is True
    assert test.verdict(100.5, 200) is True and test.verdict(100, 200) is False  # the lean; a draw keeps the parent
    assert test.verdict(22, 40) is None  # the live instance's 22 wins, 18 losses: keep collecting


def test_without_reachable_bounds_the_chance_to_serve_is_scipys_binomial_tail() -> None:
    """With bounds too far to reach in 31 votes, the test serves exactly when the win rate ends above the midpoint,
    so its chance to serve is a binomial tail and it always takes every vote."""
    test = WinRateTest(
        null_win_rate=0.45, target_win_rate=0.55, alpha=1e-9, beta=1e-9, min_votes=1, max_votes=31
    )  # fmt: skip
    for win_rate in (0.4, 0.5, 0.55, 0.7):
        served, votes = test.outlook(win_share=win_rate, tie_share=0.0)
        assert served == pytest.approx(binom.sf(15, 31, win_rate), abs=1e-12)  # more than 15.5 of 31 wins
        assert votes == pytest.approx(31)
    # From a test standing at 10 wins of 12 votes: 19 more votes, 6 or more wins needed.
    served, votes = test.outlook(win_share=0.5, tie_share=0.0, score=10, votes=12)
    assert served == pytest.approx(binom.sf(5, 19, 0.5)) and votes == pytest.approx(19)


@pytest.mark.parametrize(("win_rate", "tie_share"), [(0.45, 0.0), (0.45, 0.3), (0.55, 0.2), (0.6, 0.5)])
def test_the_exact_outlook_matches_a_simulation_of_the_verdicts(win_rate: float, tie_share: float) -> None:
    test = WinRateTest(**DEFAULTS, max_votes=120)
    win_share = win_rate - tie_share / 2
    rng = np.random.default_rng(7)
    runs = 3000
    draws = rng.choice([1.0, 0.5, 0.0], p=[win_share, tie_share, 1 - win_share - tie_share], size=(runs, 120))
    served = taken = 0
    for row in draws:
        score = 0.0
        for votes, vote in enumerate(row, start=1):
            score += vote
            verdict = test.verdict(score, votes)
            if verdict is not None:
                served += verdict
                taken += votes
                break
    exact_served, exact_votes = test.outlook(win_share=win_share, tie_share=tie_share)
    assert served / runs == pytest.approx(exact_served, abs=4 * math.sqrt(0.25 / runs))
    assert taken / runs == pytest.approx(exact_votes, rel=0.05)


@pytest.mark.parametrize("tie_share", [0.0, 0.2, 0.6])
def test_a_candidate_worse_by_the_margin_reaches_the_upper_bound_at_most_walds_alpha_even_with_ties(
    tie_share: float,
) -> None:
    """Ties count half a win, which is not a Bernoulli vote; the test must still keep its error (the docstring's
    convexity argument). Run long enough that truncation does not matter, read exactly."""
    test = WinRateTest(**DEFAULTS, max_votes=3000)
    served, _ = test.outlook(win_share=0.45 - tie_share / 2, tie_share=tie_share)
    assert served <= test.alpha / (1 - test.beta)


@pytest.mark.parametrize(
    "arguments",
    [
        {"null_win_rate": 0.55, "target_win_rate": 0.55},
        {"null_win_rate": 0.0, "target_win_rate": 0.55},
        {"target_win_rate": 1.0},
        {"alpha": 0.0},
        {"beta": 0.5},
        {"min_votes": 0},
        {"min_votes": 201},
    ],
)
def test_an_impossible_test_is_refused(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"need|must"):
        WinRateTest(**{**DEFAULTS, "max_votes": 200, **arguments})  # type: ignore[arg-type]
