"""The vote-quality statistics (annotate/agreement.py) against published examples, hand-worked cases and the
independent packages they wrap, and MACE competence on simulated annotators."""

from __future__ import annotations

import math
import random
import statistics

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from annotate.annotation.simulation import Profile, prefer_shorter
from annotate.quality.agreement import (
    LABELS,
    QualityThresholds,
    Vote,
    agreement_summary,
    alpha_nominal,
    alpha_ordinal,
    annotator_signals,
    cohen_kappa,
    competence,
    gold_accuracy,
    majority_agreement,
    pairwise_kappas,
    position_bias,
    reliability_alpha,
    self_consistency,
    speed,
)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: nominal data, four observers, twelve
# units, missing values (None). The paper reports alpha = 0.743 for nominal data.
PUBLISHED_OBSERVERS = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def _published_ratings() -> list[tuple[str, int, float]]:
    return [
        (observer, unit, value)
        for observer, values in PUBLISHED_OBSERVERS.items()
        for unit, value in enumerate(values, start=1)
        if value is not None
    ]


def test_alpha_matches_the_published_nominal_example():
    assert round(reliability_alpha(_published_ratings(), level="nominal"), 3) == 0.743


def _random_votes(seed: int, annotators: int = 6, items: int = 40) -> list[Vote]:
    rng = random.Random(seed)
    votes = []
    for item in range(items):
        truth = rng.choice(LABELS)
        for annotator in range(annotators):
            if rng.random() < 0.4:
                continue  # missing: this annotator did not see the item
            label = truth if rng.random() < 0.6 else rng.choice(LABELS)
            strength = rng.randint(1, 3) if label in ("a", "b") else None
            votes.append(Vote(annotator=f"u{annotator}", item=item, label=label, strength=strength))
    return votes


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_alpha_agrees_with_the_package_on_random_votes(seed):
    votes = _random_votes(seed)
    annotators = sorted({vote.annotator for vote in votes})
    items = sorted({vote.item for vote in votes})
    nominal = np.full((len(annotators), len(items)), np.nan)
    ordinal = np.full((len(annotators), len(items)), np.nan)
    for vote in votes:
        row, column = annotators.index(vote.annotator), items.index(vote.item)
        nominal[row, column] = LABELS.index(vote.label)
        if vote.label != "both_bad":
            ordinal[row, column] = {"a": 1, "b": -1, "tie": 0}[vote.label] * (vote.strength or 1)
    # A repeat and a duplicate must not change anything: each annotator's first vote on an item is what counts.
    noise = [
        Vote(annotator=vote.annotator, item=vote.item, label="both_bad", is_repeat=True) for vote in votes[:10]
    ] + [Vote(annotator=vote.annotator, item=vote.item, label="tie") for vote in votes[10:15]]

    assert alpha_nominal(votes + noise) == pytest.approx(
        krippendorff.alpha(reliability_data=nominal, level_of_measurement="nominal")
    )
    assert alpha_ordinal(votes + noise) == pytest.approx(
        krippendorff.alpha(reliability_data=ordinal, level_of_measurement="ordinal")
    )


def _signed_votes(first: list[int], second: list[int]) -> list[Vote]:
    votes = []
    for item, pair in enumerate(zip(first, second, strict=True)):
        for annotator, signed in zip("xy", pair, strict=True):
            label = "tie" if signed == 0 else "a" if signed > 0 else "b"
            votes.append(Vote(annotator, item, label, abs(signed) or None))
    return votes


def test_alpha_ordinal_puts_strengths_on_one_signed_scale():
    # Two annotators who pick the same side but now and then differ by one step of strength: the nominal alpha
    # over labels sees perfect agreement, the ordinal one a little less; mirrored strengths are far apart.
    near = _signed_votes([3, 2, 1, 0, -1, -2, -3], [2, 3, 1, 0, -2, -1, -3])
    mirrored = _signed_votes([3, 2, 1, 0, -1, -2, -3], [-3, -2, -1, 0, 1, 2, 3])
    assert alpha_nominal(near) == 1.0
    assert 0.8 < alpha_ordinal(near) < 1.0
    assert alpha_ordinal(mirrored) < -0.5
    # both-bad is no point on the scale: those votes are left out, the rest still measured
    both_bad = [Vote("x", 20, "both_bad"), Vote("y", 20, "both_bad")]
    assert alpha_ordinal(near + both_bad) == alpha_ordinal(near)
    assert alpha_nominal(near + both_bad) == 1.0


def test_alpha_is_undefined_not_zero_without_two_annotators_or_two_units():
    one_annotator = [Vote("x", item, "a", 1) for item in range(10)]
    assert alpha_nominal(one_annotator) is None
    one_shared_unit = [Vote("x", 1, "a"), Vote("y", 1, "b"), Vote("x", 2, "a"), Vote("y", 3, "b")]
    assert alpha_nominal(one_shared_unit) is None
    everyone_agrees_on_one_label = [Vote(name, item, "tie") for name in "xy" for item in range(5)]
    assert alpha_nominal(everyone_agrees_on_one_label) is None
    summary = agreement_summary(one_shared_unit)
    assert (summary.alpha_nominal, summary.annotators, summary.items, summary.pairable_items) == (None, 2, 3, 1)


def test_cohen_kappa_on_a_hand_worked_case():
    x = ["a", "a", "b", "b", "a", "tie", "a", "b", "b", "a"]
    y = ["a", "b", "b", "b", "a", "tie", "a", "a", "b", "a"]
    votes = [Vote("x", item, label) for item, label in enumerate(x)] + [
        Vote("y", item, label) for item, label in enumerate(y)
    ]
    votes += [Vote("z", item, "a") for item in range(3)]  # shares only 3 items: below the minimum
    # Observed agreement 8/10; by chance (5*5 + 4*4 + 1*1) / 100 = 0.42; kappa = (0.8 - 0.42) / (1 - 0.42)
    [result] = pairwise_kappas(votes, min_shared_items=5)
    assert (result.annotator, result.other, result.shared_items) == ("x", "y", 10)
    assert result.kappa == pytest.approx(0.38 / 0.58)
    assert len(pairwise_kappas(votes, min_shared_items=3)) == 3


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_cohen_kappa_agrees_with_scikit_learn(seed):
    rng = random.Random(seed)
    first = [rng.choice(LABELS) for _ in range(50)]
    second = [label if rng.random() < 0.5 else rng.choice(LABELS[: 1 + seed % 4]) for label in first]
    assert cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second, labels=list(LABELS)))


def test_kappa_is_undefined_when_both_give_one_label_throughout():
    votes = [Vote(name, item, "a") for name in "xy" for item in range(6)]
    [result] = pairwise_kappas(votes, min_shared_items=5)
    assert result.kappa is None


def test_agreement_with_the_leave_one_out_majority():
    votes = [
        # item 1: x and y say a, z says b. x's others: {a, b}, a split; so for y. z's others: a, a: z disagrees.
        Vote("x", 1, "a"),
        Vote("y", 1, "b"),
        Vote("z", 1, "a"),
        # item 2: all three say tie: everyone agrees with the others' majority.
        Vote("x", 2, "tie"),
        Vote("y", 2, "tie"),
        Vote("z", 2, "tie"),
        # item 3: only x voted: nobody to compare with.
        Vote("x", 3, "b"),
    ]
    result = majority_agreement(votes)
    assert (result["x"].agreed, result["x"].compared, result["x"].split) == (1, 1, 1)
    assert (result["z"].agreed, result["z"].compared, result["z"].split) == (1, 1, 1)
    assert (result["y"].agreed, result["y"].compared, result["y"].split) == (1, 2, 0)
    assert result["y"].share == 0.5


@pytest.mark.parametrize("seed", [1, 2])
def test_majority_agreement_matches_a_brute_force_count(seed):
    votes = _random_votes(seed, annotators=5, items=60)
    expected: dict[str, list[int]] = {}
    for vote in votes:
        others = [other.label for other in votes if other.item == vote.item and other.annotator != vote.annotator]
        counts = expected.setdefault(vote.annotator, [0, 0, 0])  # agreed, compared, split
        if not others:
            continue
        modes = statistics.multimode(others)
        if len(modes) > 1:
            counts[2] += 1
            continue
        counts[1] += 1
        counts[0] += modes[0] == vote.label
    result = majority_agreement(votes)
    assert {name: [row.agreed, row.compared, row.split] for name, row in result.items()} == expected


def test_position_bias_with_a_two_sided_binomial_test():
    # 18 left picks of 20: p = 2 * (C(20,18) + C(20,19) + C(20,20)) / 2**20 = 422 / 1048576
    votes = [Vote("x", item, "a", 1, a_on_left=item < 18) for item in range(20)]
    votes += [Vote("x", 100, "tie", a_on_left=True), Vote("x", 101, "a", 1, a_on_left=None)]  # not counted
    bias = position_bias(votes)
    assert (bias.left, bias.decisive, bias.left_share) == (18, 20, 0.9)
    assert bias.p_value == pytest.approx(422 / 1048576)
    assert position_bias([Vote("x", 1, "tie")]).p_value is None


def test_speed_gold_and_self_consistency():
    timed = [Vote("x", item, "a", 1, seconds=seconds) for item, seconds in enumerate([1.0, 2.5, 4.0, 10.0])]
    result = speed(timed, floor_seconds=3.0)
    assert (result.median_seconds, result.share_under_floor, result.timed_votes) == (3.25, 0.5, 4)
    assert speed([Vote("x", 1, "a")], floor_seconds=3.0).median_seconds is None

    expected = {1: "a", 2: "b", 3: "tie"}
    gold = gold_accuracy([Vote("x", 1, "a"), Vote("x", 2, "a"), Vote("x", 3, "tie"), Vote("x", 4, "b")], expected)
    assert (gold.correct, gold.answered, gold.accuracy) == (2, 3, pytest.approx(2 / 3))

    # Sides are swapped on a repeat: the same label relative to the pair is consistent, the same screen side is not.
    firsts = [Vote("x", item, "a", 2, a_on_left=True) for item in range(3)]
    repeats = [
        Vote("x", 0, "a", 2, a_on_left=False, is_repeat=True),
        Vote("x", 1, "b", 2, a_on_left=False, is_repeat=True),  # clicked left both times
        Vote("x", 2, "a", 1, a_on_left=False, is_repeat=True),
        Vote("x", 9, "a", 1, a_on_left=False, is_repeat=True),  # no first vote: not counted
    ]
    consistency = self_consistency(firsts + repeats)
    assert (consistency.consistent, consistency.repeats) == (2, 3)


def _row(rows, annotator):
    return next(row for row in rows if row.annotator == annotator)


def test_flags_give_their_reasons_and_need_enough_evidence():
    thresholds = QualityThresholds(competence_min_votes=1000)  # no competence flags here
    votes = []
    for item in range(30):
        # "lefty" picks left 27 times of 30, "quick" answers in half a second, "steady" is fine
        votes.append(Vote("lefty", item, "a", 1, a_on_left=item < 27, seconds=8.0))
        votes.append(Vote("quick", item, "a", 1, a_on_left=item % 2 == 0, seconds=0.5))
        votes.append(Vote("steady", item, "a", 1, a_on_left=item % 2 == 0, seconds=9.0))
    gold = {item: "b" for item in range(4)}  # four gold items, all answered wrong by everyone: under the minimum 5
    rows = annotator_signals(votes, thresholds=thresholds, gold=gold, competences={})

    lefty = _row(rows, "lefty")
    assert [flag.code for flag in lefty.flags] == ["position_bias"]
    assert "left answer in 90% of 30 decisive votes" in lefty.flags[0].reason
    quick = _row(rows, "quick")
    assert [flag.code for flag in quick.flags] == ["fast"]
    assert "median 0.5 s" in quick.flags[0].reason
    assert _row(rows, "steady").flags == ()
    assert _row(rows, "steady").gold.answered == 4

    gold[4] = "b"  # a fifth gold item: now the evidence is enough
    rows = annotator_signals(votes, thresholds=thresholds, gold=gold, competences={"steady": 0.1})
    steady = _row(rows, "steady")
    assert [flag.code for flag in steady.flags] == ["gold"]
    assert "0 of 5 gold pairs right" in steady.flags[0].reason
    rows = annotator_signals(
        votes, thresholds=QualityThresholds(competence_min_votes=30), competences={"steady": 0.1, "quick": 0.9}
    )
    assert [flag.code for flag in _row(rows, "steady").flags] == ["low_competence"]


def test_inconsistent_flag_on_repeats():
    thresholds = QualityThresholds()
    firsts = [Vote("x", item, "a", 1, a_on_left=True, seconds=9.0) for item in range(6)]
    flipped = [Vote("x", item, "b", 1, a_on_left=False, seconds=9.0, is_repeat=True) for item in range(6)]
    [row] = annotator_signals(firsts + flipped, thresholds=thresholds, competences={})
    assert row.votes == 6  # the repeats are not counted as votes a second time
    assert [flag.code for flag in row.flags] == ["inconsistent"]
    assert "same answer on 0 of 6 repeated pairs" in row.flags[0].reason
    [row] = annotator_signals(firsts + flipped[:4], thresholds=thresholds, competences={})
    assert row.flags == ()  # four repeats: under the minimum of five


def test_length_bias_is_read_against_everyone():
    votes = [Vote("short", item, "a", 1, a_is_longer=False) for item in range(10)]
    votes += [Vote("long", item, "a" if item < 8 else "b", 1, a_is_longer=True) for item in range(10)]
    votes += [Vote("long", 50, "a", 1, a_is_longer=None)]  # same length: no longer answer to choose
    rows = annotator_signals(votes, thresholds=QualityThresholds(), competences={})
    assert (_row(rows, "short").longer_share, _row(rows, "short").longer_decisive) == (0.0, 10)
    assert (_row(rows, "long").longer_share, _row(rows, "long").longer_decisive) == (0.8, 10)
    assert _row(rows, "long").campaign_longer_share == 0.4


def _simulated_votes(profiles: dict[str, Profile], items: int, seed: int) -> list[Vote]:
    """Every annotator votes on every pair; sides are shown at random, as the lease service does."""
    rng = random.Random(seed)
    texts = [("x" * rng.randint(20, 200), "y" * rng.randint(20, 200)) for _ in range(items)]
    votes = []
    for item, (text_a, text_b) in enumerate(texts):
        for annotator, profile in profiles.items():
            a_on_left = rng.random() < 0.5
            left, right = (text_a, text_b) if a_on_left else (text_b, text_a)
            decision = profile.decide(left=left, right=right, preference=prefer_shorter, rng=rng)
            label = decision.choice
            if label in ("left", "right"):
                label = "a" if (label == "left") == a_on_left else "b"
            votes.append(Vote(annotator, item, label, decision.strength, a_on_left, decision.seconds))
    return votes


@pytest.mark.parametrize("seed", [11, 12])
def test_competence_separates_careful_annotators_from_spammers(seed):
    profiles = {f"careful-{number}": Profile("careful") for number in range(6)}
    profiles |= {"noisy-1": Profile("noisy", 0.7), "noisy-2": Profile("noisy", 0.7)}
    profiles |= {"left-biased": Profile("left-biased", 0.9), "random": Profile("random")}
    scores = competence(_simulated_votes(profiles, items=150, seed=seed))

    assert scores["random"] < 0.2
    # Sides are shown at random, so relative to the pair a left-biased annotator is guessing too.
    assert scores["left-biased"] < QualityThresholds().competence
    assert all(scores[f"careful-{number}"] > 0.8 for number in range(6))
    assert all(0.4 < scores[name] < 0.95 for name in ("noisy-1", "noisy-2"))


def test_competence_is_empty_with_a_single_annotator():
    assert competence([Vote("x", item, "a") for item in range(5)]) == {}


def test_alpha_on_simulated_votes_falls_as_spammers_join():
    careful = {f"careful-{number}": Profile("careful") for number in range(4)}
    spammers = {f"random-{number}": Profile("random") for number in range(4)}
    clean = alpha_nominal(_simulated_votes(careful, items=60, seed=5))
    mixed = alpha_nominal(_simulated_votes(careful | spammers, items=60, seed=5))
    assert clean == 1.0
    assert mixed is not None and not math.isnan(mixed) and mixed < 0.5


def test_a_repeat_is_never_counted_as_a_vote_even_without_its_first_vote():
    # A time window can hold a repeat whose first vote fell before the window: it still counts only as a repeat.
    votes = [Vote("x", 1, "a", 1, is_repeat=True), Vote("y", 1, "b", 1), Vote("x", 2, "a", 1), Vote("y", 2, "a", 1)]
    summary = agreement_summary(votes)
    assert (summary.votes, summary.pairable_items) == (3, 1)
    assert majority_agreement(votes)["y"].compared == 1
    assert self_consistency(votes).repeats == 0
