"""Bradley-Terry ratings: checked against choix's own optimiser, on simulated votes with known strengths, and on
a planted length preference."""

import math

import choix
import numpy as np
import pytest

from annotate.leaderboard.ratings import (
    ANCHOR_RATING,
    POINTS_PER_LOGIT,
    Vote,
    bradley_terry_fit,
    leaderboard_compute,
)


def simulate(strengths, count, rng, tie_share=0.0, lengths=None, length_effect=0.0):
    """Votes between random pairs of versions drawn from the Bradley-Terry model with these strengths (logits).

    `lengths`: each version's typical answer length; answers vary around it, and a voter's odds of preferring A
    grow by `length_effect` logits per unit of relative length difference.
    """
    names = list(strengths)
    votes = []
    for _ in range(count):
        first, second = rng.choice(len(names), 2, replace=False)
        version_a, version_b = names[first], names[second]
        length_a = length_b = 100
        if lengths:
            length_a = int(lengths[version_a] * rng.lognormal(0, 0.4))
            length_b = int(lengths[version_b] * rng.lognormal(0, 0.4))
        relative = (length_a - length_b) / (length_a + length_b)
        logit = strengths[version_a] - strengths[version_b] + length_effect * relative
        a_wins = rng.random() < 1 / (1 + math.exp(-logit))
        outcome = "tie" if rng.random() < tie_share else "a" if a_wins else "b"
        votes.append(Vote(version_a, version_b, outcome, length_a, length_b))
    return votes


def choix_strengths(votes, names, prior_variance):
    """An independent fit: choix's Newton-CG on (winner, loser) pairs. choix has no weights, so every decisive vote
    is given twice and a tie once each way (half a win each); choix minimises alpha * |theta|^2 + sum(loss), which
    at twice the data matches our prior of variance C when alpha = 1 / C."""
    index = {name: number for number, name in enumerate(names)}
    data = []
    for vote in votes:
        a, b = index[vote.version_a], index[vote.version_b]
        data += {"a": [(a, b), (a, b)], "b": [(b, a), (b, a)]}.get(vote.outcome, [(a, b), (b, a)])
    theta = choix.opt_pairwise(len(names), data, alpha=1 / prior_variance, tol=1e-12)
    return dict(zip(names, theta, strict=True))


STRENGTHS = {"base": 0.0, "round-1": 0.5, "round-2": 1.1, "round-3": -0.4}


@pytest.mark.parametrize("prior_variance", [4.0, 1e6])
def test_ratings_match_an_independent_fit_with_choix(prior_variance):
    rng = np.random.default_rng(7)
    votes = simulate(STRENGTHS, 500, rng, tie_share=0.15)
    votes += [Vote("round-1", "round-2", "both_bad"), Vote("base", "round-3", "both_bad")]
    names = list(STRENGTHS)

    ours, _ = bradley_terry_fit(votes, versions=names, prior_variance=prior_variance)
    theirs = choix_strengths(votes, names, prior_variance)
    for name in names:
        assert ours[name] - ours["base"] == pytest.approx(theirs[name] - theirs["base"], abs=1e-5)

    board = leaderboard_compute(votes, anchor="base", bootstrap_rounds=20, prior_variance=prior_variance)
    on_scale = {rating.version: rating.rating for rating in board.ratings}
    for name in names:
        expected = ANCHOR_RATING + POINTS_PER_LOGIT * (theirs[name] - theirs["base"])
        assert on_scale[name] == pytest.approx(expected, abs=1e-3)
    assert on_scale["base"] == ANCHOR_RATING
    assert board.ratings[0].version == "round-2"


def test_a_tie_is_half_a_win_and_both_bad_is_a_tie():
    # One win and two ties has the likelihood p * (p (1 - p)) = p^2 (1 - p), the same as two wins and a loss.
    with_ties, _ = bradley_terry_fit(
        [Vote("x", "y", "a"), Vote("x", "y", "tie"), Vote("y", "x", "tie")], versions=["x", "y"]
    )
    decisive, _ = bradley_terry_fit(
        [Vote("x", "y", "a"), Vote("x", "y", "a"), Vote("y", "x", "a")], versions=["x", "y"]
    )
    both_bad, _ = bradley_terry_fit(
        [Vote("x", "y", "a"), Vote("x", "y", "both_bad"), Vote("y", "x", "both_bad")], versions=["x", "y"]
    )
    assert with_ties["x"] - with_ties["y"] > 0.1
    assert with_ties["x"] == pytest.approx(decisive["x"], abs=1e-6)
    assert both_bad["x"] == pytest.approx(with_ties["x"], abs=1e-6)

    only_ties = leaderboard_compute([Vote("x", "y", "tie")] * 5 + [Vote("y", "x", "both_bad")] * 5, anchor="x")
    assert {rating.version: round(rating.rating, 6) for rating in only_ties.ratings} == {"x": 1000.0, "y": 1000.0}


def test_records_and_the_win_rate_matrix_count_every_vote_once():
    votes = [
        Vote("base", "new", "b"),
        Vote("new", "base", "a"),
        Vote("new", "base", "b"),
        Vote("base", "new", "tie"),
        Vote("new", "base", "both_bad"),
        Vote("old", "new", "a"),
    ]
    board = leaderboard_compute(votes, anchor="base", bootstrap_rounds=10)
    against_base = board.matrix["new", "base"]
    assert (against_base.votes, against_base.wins, against_base.ties, against_base.losses) == (5, 2, 2, 1)
    assert against_base.both_bad == 1 and against_base.win_rate == pytest.approx(3 / 5)
    assert board.matrix["base", "new"].win_rate == pytest.approx(2 / 5)
    assert board.matrix["old", "new"].wins == 1 and ("old", "base") not in board.matrix
    assert board.records["new"].votes == 6 and board.records["new"].win_rate == pytest.approx(3 / 6)
    assert board.votes == 6


def test_ranks_follow_non_overlapping_intervals_and_the_bootstrap_is_seeded():
    rng = np.random.default_rng(3)
    strengths = {"base": 0.0, "close": 0.05, "far": 2.0, "bad": -2.0}
    votes = simulate(strengths, 800, rng)
    board = leaderboard_compute(votes, anchor="base", bootstrap_rounds=100, seed=1)

    rank = {rating.version: rating.rank for rating in board.ratings}
    assert rank == {"far": 1, "base": 2, "close": 2, "bad": 4}
    for rating in board.ratings:
        assert rating.lower <= rating.rating <= rating.upper
        above = [other for other in board.ratings if other.lower > rating.upper]
        assert rating.rank == 1 + len(above)
    assert leaderboard_compute(votes, anchor="base", bootstrap_rounds=100, seed=1) == board
    other_seed = leaderboard_compute(votes, anchor="base", bootstrap_rounds=100, seed=2)
    assert other_seed.ratings != board.ratings
    assert [r.rating for r in other_seed.ratings] == pytest.approx([r.rating for r in board.ratings])


def test_versions_with_no_chain_of_votes_to_the_reference_are_not_rated():
    votes = [Vote("base", "new", "a"), Vote("new", "base", "a"), Vote("island-1", "island-2", "b")]
    board = leaderboard_compute(votes, anchor="base", bootstrap_rounds=10)
    assert {rating.version for rating in board.ratings} == {"base", "new"}
    assert board.unconnected == ["island-1", "island-2"]
    assert board.matrix["island-2", "island-1"].wins == 1


def test_bad_votes_are_refused():
    with pytest.raises(ValueError, match="not a head-to-head vote"):
        leaderboard_compute([Vote("base", "base", "a")])
    with pytest.raises(ValueError, match="has no head-to-head votes"):
        leaderboard_compute([Vote("base", "new", "a")], anchor="elsewhere")
    with pytest.raises(ValueError, match="an outcome is one of"):
        leaderboard_compute([Vote("base", "new", "left")])  # type: ignore[arg-type]
    empty = leaderboard_compute([], anchor="base")
    assert empty.ratings == [] and empty.votes == 0


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_true_differences_about_95_percent_of_the_time():
    """200 simulated leaderboards of 300 votes each, known strengths: each interval of a version's difference to
    the reference should hold the true difference about 95 % of the time (600 intervals)."""
    rng = np.random.default_rng(2026)
    covered = checked = 0
    for simulation in range(200):
        votes = simulate(STRENGTHS, 300, rng, tie_share=0.1)
        board = leaderboard_compute(votes, anchor="base", bootstrap_rounds=100, seed=simulation)
        for rating in board.ratings:
            if rating.version == "base":
                continue
            truth = ANCHOR_RATING + POINTS_PER_LOGIT * STRENGTHS[rating.version]
            covered += rating.lower <= truth <= rating.upper
            checked += 1
    assert checked == 600
    assert 0.90 <= covered / checked <= 0.99


def test_bootstrap_intervals_are_neither_points_nor_the_whole_scale():
    """A quick relative of the coverage test above (which is marked slow): 20 simulations."""
    rng = np.random.default_rng(11)
    covered = checked = 0
    for simulation in range(20):
        board = leaderboard_compute(simulate(STRENGTHS, 300, rng), anchor="base", bootstrap_rounds=50, seed=simulation)
        for rating in board.ratings:
            if rating.version != "base":
                truth = ANCHOR_RATING + POINTS_PER_LOGIT * STRENGTHS[rating.version]
                covered += rating.lower <= truth <= rating.upper
                checked += 1
                assert 40 < rating.upper - rating.lower < 400
    assert covered / checked >= 0.85


def test_length_control_recovers_a_planted_length_preference_and_removes_it_from_the_ratings():
    """Three equally good versions, one of which writes answers about twice as long; voters prefer longer answers
    (3 logits per unit of relative length difference). Plain ratings put the long-winded version on top; with length
    control its advantage is gone and the coefficient is found."""
    rng = np.random.default_rng(1)
    strengths = {"base": 0.0, "verbose": 0.0, "better": 0.6}
    lengths = {"base": 200, "verbose": 400, "better": 200}
    votes = simulate(strengths, 1500, rng, lengths=lengths, length_effect=3.0)

    board = leaderboard_compute(votes, anchor="base", bootstrap_rounds=100, length_control=True)
    plain = {rating.version: rating for rating in board.ratings}
    controlled = {rating.version: rating for rating in board.length_controlled}
    assert plain["verbose"].lower > ANCHOR_RATING + 50  # plain: the verbose version looks much better

    effect = board.length_effect
    assert effect.coefficient == pytest.approx(3.0, abs=0.6)  # three standard errors (0.2 over 20 seeds)
    assert effect.lower < 3.0 < effect.upper and effect.lower > 2.0
    assert effect.points_twice_as_long == pytest.approx(effect.coefficient / 3 * POINTS_PER_LOGIT)
    assert controlled["verbose"].lower < ANCHOR_RATING < controlled["verbose"].upper
    assert abs(controlled["verbose"].rating - ANCHOR_RATING) < 30
    # A version better on its merits keeps its lead.
    assert controlled["better"].lower > ANCHOR_RATING
    assert controlled["better"].rating == pytest.approx(ANCHOR_RATING + 0.6 * POINTS_PER_LOGIT, abs=40)


def test_without_a_length_preference_length_control_changes_little():
    rng = np.random.default_rng(9)
    lengths = {"base": 200, "verbose": 400, "better": 200}
    votes = simulate({"base": 0.0, "verbose": 0.3, "better": 0.6}, 1200, rng, lengths=lengths)
    board = leaderboard_compute(votes, anchor="base", bootstrap_rounds=60, length_control=True)
    assert board.length_effect.lower < 0 < board.length_effect.upper
    plain = {rating.version: rating.rating for rating in board.ratings}
    controlled = {rating.version: rating.rating for rating in board.length_controlled}
    assert controlled["verbose"] == pytest.approx(plain["verbose"], abs=30)
