"""Vote quality statistics over plain records: agreement between annotators and the signals of each annotator.

Pure functions with no Django import, so they can be tested on made-up votes and reused by benchmarks; the Django
side (annotate.quality.selectors) reads judgements into `Vote` records and calls these.

Conventions that hold everywhere below:
- A label is relative to the pair: "a", "b", "tie" or "both_bad", never a screen side.
- A repeat vote (the same pair judged again by the same annotator, sides swapped) feeds self-consistency only: every
  other statistic reads each annotator's first vote on a pair, so a repeat is never counted twice.
- A statistic that cannot be computed is None (undefined), never 0: alpha with fewer than two annotators, a share
  with nothing to share out, a p-value with no decisive vote.
"""

from __future__ import annotations

import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any, Literal

import krippendorff
import numpy as np
from scipy.stats import binomtest, kendalltau

LABELS: tuple[str, ...] = ("a", "b", "tie", "both_bad")
DECISIVE: frozenset[str] = frozenset({"a", "b"})
SIGNED_STRENGTHS: tuple[int, ...] = (-3, -2, -1, 0, 1, 2, 3)


@dataclass(frozen=True)
class Vote:
    """One vote as the statistics need it.

    `a_on_left` is None when the side is unknown (imported votes); `a_is_longer` is None when both answers have the
    same length (then no choice is "the longer one"); `strength` is 1-3 for decisive votes, None when unknown.
    """

    annotator: Hashable
    item: Hashable
    label: str
    strength: int | None = None
    a_on_left: bool | None = None
    seconds: float | None = None
    a_is_longer: bool | None = None
    is_repeat: bool = False
    vote_id: Hashable = None
    # A ranking of a ranking pair's answers (ranks by position, 1 the best; annotate/annotation/rankings.py), whose
    # `label` is what it says of A against B. None for a vote on two answers.
    ranking: tuple[int, ...] | None = None

    @property
    def is_decisive(self) -> bool:
        return self.label in DECISIVE

    @property
    def chose_left(self) -> bool | None:
        """True when the chosen answer was on the left of the screen; None for ties, both-bad and unknown sides."""
        if not self.is_decisive or self.a_on_left is None:
            return None
        return (self.label == "a") == self.a_on_left

    @property
    def chose_longer(self) -> bool | None:
        if not self.is_decisive or self.a_is_longer is None:
            return None
        return (self.label == "a") == self.a_is_longer

    @property
    def signed_strength(self) -> int | None:
        """The ordinal scale: +1..+3 for A by its strength, -1..-3 for B, 0 for a tie.

        None for both-bad (not a point on the scale) and for a decisive vote of unknown strength.
        """
        if self.label == "tie":
            return 0
        if not self.is_decisive or self.strength is None:
            return None
        return self.strength if self.label == "a" else -self.strength


def p_value_text(value: float) -> str:
    """A p-value as people read it: "p = 0.42", "p = 0.013", "p < 0.001"."""
    if value < 0.001:
        return "p < 0.001"
    return f"p = {value:.2f}" if value >= 0.01 else f"p = {value:.3f}"


def first_votes(votes: Iterable[Vote]) -> list[Vote]:
    """Each annotator's first vote on each item: repeats are left out, and so is any later duplicate."""
    seen: set[tuple[Hashable, Hashable]] = set()
    kept = []
    for vote in votes:
        key = (vote.annotator, vote.item)
        if vote.is_repeat or key in seen:
            continue
        seen.add(key)
        kept.append(vote)
    return kept


# --- Agreement ------------------------------------------------------------------------------------------------


def reliability_alpha(
    ratings: Iterable[tuple[Hashable, Hashable, float]], *, level: Literal["nominal", "ordinal"]
) -> float | None:
    """Krippendorff's alpha over (coder, unit, value) ratings, computed by the `krippendorff` package.

    None (undefined) with fewer than two coders, fewer than two pairable units (units with at least two values),
    or when every value is the same (no expected disagreement). A coder's second value on a unit is ignored.
    """
    by_unit: dict[Hashable, dict[Hashable, float]] = defaultdict(dict)
    coders: set[Hashable] = set()
    for coder, unit, value in ratings:
        by_unit[unit].setdefault(coder, value)
        coders.add(coder)
    pairable = [values for values in by_unit.values() if len(values) >= 2]
    if len(coders) < 2 or len(pairable) < 2:
        return None
    domain = sorted({value for values in pairable for value in values.values()})
    if len(domain) < 2:
        return None
    index = {value: position for position, value in enumerate(domain)}
    # The package takes a units x values count matrix directly: small even for 100k votes, unlike coders x units.
    counts = np.zeros((len(pairable), len(domain)), dtype=float)
    for row, values in enumerate(pairable):
        for value in values.values():
            counts[row, index[value]] += 1
    result = float(krippendorff.alpha(value_counts=counts, value_domain=domain, level_of_measurement=level))
    return None if np.isnan(result) else result


def alpha_nominal(votes: Iterable[Vote]) -> float | None:
    """Krippendorff's alpha over the four labels a / b / tie / both_bad, as nominal categories."""
    return reliability_alpha(
        ((vote.annotator, vote.item, LABELS.index(vote.label)) for vote in first_votes(votes)), level="nominal"
    )


def alpha_ordinal(votes: Iterable[Vote]) -> float | None:
    """Krippendorff's alpha on the signed strength scale -3..+3 (tie 0); both-bad and unknown strengths left out."""
    return reliability_alpha(
        (
            (vote.annotator, vote.item, vote.signed_strength)
            for vote in first_votes(votes)
            if vote.signed_strength is not None
        ),
        level="ordinal",
    )


def _ranked(votes: Iterable[Vote]) -> list[Vote]:
    """First votes that rank (all-bad rankings aside: they order nothing)."""
    return [vote for vote in first_votes(votes) if vote.ranking is not None and vote.label != "both_bad"]


def ranking_alpha_ordinal(votes: Iterable[Vote]) -> float | None:
    """Krippendorff's alpha, ordinal, on the pair orders rankings imply: each two answers of a ranking pair are a
    unit, valued -1 (the first ranked better), 0 (tied) or +1 (the second ranked better)."""
    ratings = []
    for vote in _ranked(votes):
        ranks = vote.ranking or ()
        for first, second in combinations(range(len(ranks)), 2):
            order = float(np.sign(ranks[first] - ranks[second]))
            ratings.append((vote.annotator, (vote.item, first, second), order))
    return reliability_alpha(ratings, level="ordinal")


def ranking_kendall_tau(votes: Iterable[Vote]) -> float | None:
    """Kendall's tau-b between two annotators' rankings of the same answers (scipy.stats.kendalltau, which corrects
    for ties), averaged over every two annotators of every ranking pair; None with no pair ranked twice, and a pair
    whose two rankings tie everything (tau undefined) is left out."""
    by_item: dict[Hashable, list[tuple[int, ...]]] = defaultdict(list)
    for vote in _ranked(votes):
        by_item[vote.item].append(vote.ranking or ())
    taus = []
    for rankings in by_item.values():
        for first, second in combinations(rankings, 2):
            if len(first) == len(second):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a constant ranking: tau is nan, left out below
                    tau = float(kendalltau(first, second).statistic)
                if not np.isnan(tau):
                    taus.append(tau)
    return statistics.fmean(taus) if taus else None


@dataclass(frozen=True)
class AgreementSummary:
    alpha_nominal: float | None
    alpha_ordinal: float | None
    annotators: int
    items: int
    votes: int
    # Items with votes from at least two annotators: the ones agreement is measured on.
    pairable_items: int
    # Rankings among the votes, and the agreement of rankings of the same answers (None: no two to compare).
    rankings: int = 0
    ranking_alpha_ordinal: float | None = None
    ranking_kendall_tau: float | None = None


def agreement_summary(votes: Sequence[Vote]) -> AgreementSummary:
    firsts = first_votes(votes)
    per_item = Counter(vote.item for vote in firsts)
    return AgreementSummary(
        alpha_nominal=alpha_nominal(firsts),
        alpha_ordinal=alpha_ordinal(firsts),
        annotators=len({vote.annotator for vote in firsts}),
        items=len(per_item),
        votes=len(firsts),
        pairable_items=sum(1 for count in per_item.values() if count >= 2),
        rankings=sum(1 for vote in firsts if vote.ranking is not None),
        ranking_alpha_ordinal=ranking_alpha_ordinal(firsts),
        ranking_kendall_tau=ranking_kendall_tau(firsts),
    )


@dataclass(frozen=True)
class PairwiseKappa:
    annotator: Hashable
    other: Hashable
    shared_items: int
    kappa: float | None  # None when undefined: both annotators gave one and the same label throughout


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa between two annotators' labels on the same items, in the order given.

    The same statistic as scikit-learn's `cohen_kappa_score` (the tests check it against that), written over a 4x4
    count matrix because the library's per-call overhead made kappas for every two of 100 annotators take over a
    minute. None when undefined: chance agreement is 1 (both gave one and the same label throughout) or no items.
    """
    if not first:
        return None
    codes = {label: position for position, label in enumerate(LABELS)}
    pairs = np.fromiter((codes[a] * len(LABELS) + codes[b] for a, b in zip(first, second, strict=True)), dtype=int)
    confusion = np.bincount(pairs, minlength=len(LABELS) ** 2).reshape(len(LABELS), len(LABELS)) / len(pairs)
    observed = float(np.trace(confusion))
    expected = float(confusion.sum(axis=1) @ confusion.sum(axis=0))
    if np.isclose(expected, 1.0):
        return None
    return (observed - expected) / (1 - expected)


def pairwise_kappas(votes: Iterable[Vote], *, min_shared_items: int) -> list[PairwiseKappa]:
    """Cohen's kappa over the four labels for every two annotators sharing at least `min_shared_items` items."""
    labels: dict[Hashable, dict[Hashable, str]] = defaultdict(dict)
    for vote in first_votes(votes):
        labels[vote.annotator][vote.item] = vote.label
    results = []
    for annotator, other in combinations(sorted(labels, key=str), 2):
        shared = labels[annotator].keys() & labels[other].keys()
        if len(shared) < max(min_shared_items, 1):
            continue
        kappa = cohen_kappa([labels[annotator][item] for item in shared], [labels[other][item] for item in shared])
        results.append(PairwiseKappa(annotator, other, len(shared), kappa))
    return results


@dataclass(frozen=True)
class MajorityAgreement:
    agreed: int
    compared: int
    # Votes on items whose other voters were split evenly (no single majority label): left out, neither way.
    split: int

    @property
    def share(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


def majority_agreement(votes: Iterable[Vote]) -> dict[Hashable, MajorityAgreement]:
    """Each annotator against the leave-one-out majority: the most common label among the other voters on an item.

    Items nobody else voted on are left out; so are items where the others' most common label is shared by two
    labels (a split, e.g. one "a" and one "b"): no majority to agree with, counted in `split`.
    """
    by_item: dict[Hashable, list[Vote]] = defaultdict(list)
    for vote in first_votes(votes):
        by_item[vote.item].append(vote)
    agreed: Counter[Hashable] = Counter()
    compared: Counter[Hashable] = Counter()
    split: Counter[Hashable] = Counter()
    annotators: set[Hashable] = set()
    for item_votes in by_item.values():
        all_counts = Counter(vote.label for vote in item_votes)
        for vote in item_votes:
            annotators.add(vote.annotator)
            others = {label: count - (label == vote.label) for label, count in all_counts.items()}
            top = max(others.values())
            if top == 0:
                continue
            if sum(1 for count in others.values() if count == top) > 1:
                split[vote.annotator] += 1
                continue
            compared[vote.annotator] += 1
            if others[vote.label] == top:
                agreed[vote.annotator] += 1
    return {
        annotator: MajorityAgreement(agreed[annotator], compared[annotator], split[annotator])
        for annotator in annotators
    }


# --- Signals of one annotator ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PositionBias:
    left: int
    decisive: int  # decisive votes whose screen side is known
    p_value: float | None  # two-sided binomial test against 50 % left

    @property
    def left_share(self) -> float | None:
        return self.left / self.decisive if self.decisive else None


def position_bias(votes: Iterable[Vote]) -> PositionBias:
    """Share of left picks among one annotator's decisive votes, with a two-sided binomial test p-value."""
    sides = [vote.chose_left for vote in votes if vote.chose_left is not None]
    left = sum(sides)
    p_value = float(binomtest(left, len(sides), 0.5, alternative="two-sided").pvalue) if sides else None
    return PositionBias(left=left, decisive=len(sides), p_value=p_value)


@dataclass(frozen=True)
class Speed:
    median_seconds: float | None
    share_under_floor: float | None
    timed_votes: int


def speed(votes: Iterable[Vote], *, floor_seconds: float) -> Speed:
    timed = [vote.seconds for vote in votes if vote.seconds is not None]
    if not timed:
        return Speed(None, None, 0)
    return Speed(
        median_seconds=float(statistics.median(timed)),
        share_under_floor=sum(1 for seconds in timed if seconds < floor_seconds) / len(timed),
        timed_votes=len(timed),
    )


def longer_share(votes: Iterable[Vote]) -> tuple[float | None, int]:
    """Share of decisive votes (between answers of different length) that went to the longer answer, and the count."""
    picks = [vote.chose_longer for vote in votes if vote.chose_longer is not None]
    return (sum(picks) / len(picks) if picks else None), len(picks)


def label_share(votes: Sequence[Vote], label: str) -> float | None:
    return sum(1 for vote in votes if vote.label == label) / len(votes) if votes else None


@dataclass(frozen=True)
class GoldAccuracy:
    correct: int
    answered: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answered if self.answered else None


def gold_accuracy(votes: Iterable[Vote], expected: Mapping[Any, str]) -> GoldAccuracy:
    """How many of one annotator's votes on gold items gave the expected label (relative to the pair)."""
    on_gold = [vote for vote in votes if vote.item in expected]
    return GoldAccuracy(sum(1 for vote in on_gold if vote.label == expected[vote.item]), len(on_gold))


@dataclass(frozen=True)
class SelfConsistency:
    consistent: int
    repeats: int  # repeat votes whose first vote is known

    @property
    def share(self) -> float | None:
        return self.consistent / self.repeats if self.repeats else None


def self_consistency(votes: Iterable[Vote]) -> SelfConsistency:
    """Repeat votes that agree with the same annotator's first vote on the same pair (labels relative to the pair:
    the sides were swapped, so clicking the same side twice disagrees)."""
    votes = list(votes)
    first = {(vote.annotator, vote.item): vote.label for vote in first_votes(votes)}
    consistent = repeats = 0
    for vote in votes:
        original = first.get((vote.annotator, vote.item))
        if not vote.is_repeat or original is None:
            continue
        repeats += 1
        consistent += vote.label == original
    return SelfConsistency(consistent, repeats)


def competence(votes: Iterable[Vote], *, iterations: int = 50, seed: int = 0) -> dict[Hashable, float]:
    """Each annotator's probability of answering from knowledge rather than guessing: MACE (Hovy et al. 2013), as
    implemented by crowd-kit, over the four labels.

    MACE models each vote as "knows the answer" (gives the true label) or "spams" (draws from their own label
    distribution); 1 - P(spamming) is a competence in [0, 1] that stays near 0 for a random clicker. Dawid-Skene's
    per-annotator accuracies are not: a random annotator's confusion matrix still puts about half its mass on the
    diagonal with two labels, so it scores near 0.5. crowd-kit's restarts all start from the same seed, so one run
    is as good as ten and we make one. Empty when fewer than two annotators voted (nothing to compare against).
    """
    # Imported here: crowd-kit pulls pandas and its own dependencies, which only this function needs.
    import pandas as pd
    from crowdkit.aggregation import MACE

    firsts = first_votes(votes)
    annotators = {vote.annotator for vote in firsts}
    if len(annotators) < 2:
        return {}
    # Whole numbers for workers and tasks: pandas groups them about 2.5 times faster than strings.
    annotator_codes = {
        annotator: code for code, annotator in enumerate(dict.fromkeys(vote.annotator for vote in firsts))
    }
    item_codes = {item: code for code, item in enumerate(dict.fromkeys(vote.item for vote in firsts))}
    frame = pd.DataFrame(
        {
            "worker": [annotator_codes[vote.annotator] for vote in firsts],
            "task": [item_codes[vote.item] for vote in firsts],
            "label": [vote.label for vote in firsts],
        }
    )
    with warnings.catch_warnings():
        # crowd-kit 1.4.2 calls pandas methods with inplace=True, which pandas 3 deprecates; it still works.
        warnings.filterwarnings("ignore", message="The inplace keyword", module="crowdkit")
        model = MACE(n_restarts=1, n_iter=iterations, random_state=seed).fit(frame)
    worker_codes = pd.factorize(frame["worker"])[1]  # the order MACE numbers its workers in
    knowing = {int(code): float(model.spamming_[position, 1]) for position, code in enumerate(worker_codes)}
    return {annotator: knowing[code] for annotator, code in annotator_codes.items()}


# --- The per-annotator table and its flags --------------------------------------------------------------------


@dataclass(frozen=True)
class QualityThresholds:
    """When an annotator is flagged. Defaults are the QUALITY_* settings' defaults (annotate/settings.py)."""

    position_bias_p_value: float = 0.01
    # A flag needs both a significant test and a share of one side above this (left or right).
    position_bias_share: float = 0.7
    fast_floor_seconds: float = 2.0  # a vote under this is "too fast to have read both answers"
    fast_median_seconds: float = 3.0
    competence: float = 0.5
    # MACE on a handful of votes is a guess: no competence flag below this many votes.
    competence_min_votes: int = 10
    gold_accuracy: float = 0.6
    gold_min_votes: int = 5
    self_consistency: float = 0.6
    self_consistency_min_repeats: int = 5
    kappa_min_shared_items: int = 10


@dataclass(frozen=True)
class Flag:
    code: str  # position_bias, fast, low_competence, gold, inconsistent
    reason: str


@dataclass(frozen=True)
class AnnotatorSignals:
    annotator: Hashable
    votes: int
    position: PositionBias
    speed: Speed
    longer_share: float | None
    longer_decisive: int
    campaign_longer_share: float | None  # the same share over everyone's votes, to read the annotator's against
    tie_rate: float | None
    both_bad_rate: float | None
    majority: MajorityAgreement
    gold: GoldAccuracy
    consistency: SelfConsistency
    competence: float | None
    flags: tuple[Flag, ...] = field(default=())


def annotator_flags(signals: AnnotatorSignals, thresholds: QualityThresholds) -> tuple[Flag, ...]:
    """The reasons to distrust an annotator, each with the numbers behind it. No flag on too little evidence."""
    flags = []
    position, share = signals.position, signals.position.left_share
    if position.p_value is not None and share is not None and position.p_value < thresholds.position_bias_p_value:
        side, side_share = ("left", share) if share >= 0.5 else ("right", 1 - share)
        if side_share > thresholds.position_bias_share:
            flags.append(
                Flag(
                    "position_bias",
                    f"picked the {side} answer in {side_share:.0%} of {position.decisive} decisive votes "
                    f"(binomial test, {p_value_text(position.p_value)})",
                )
            )
    median = signals.speed.median_seconds
    if median is not None and median < thresholds.fast_median_seconds:
        under = signals.speed.share_under_floor or 0.0
        flags.append(
            Flag(
                "fast",
                f"median {median:.1f} s per vote (under {thresholds.fast_median_seconds:g} s); "
                f"{under:.0%} of votes under {thresholds.fast_floor_seconds:g} s",
            )
        )
    if (
        signals.competence is not None
        and signals.votes >= thresholds.competence_min_votes
        and signals.competence < thresholds.competence
    ):
        flags.append(
            Flag("low_competence", f"MACE competence {signals.competence:.2f} (under {thresholds.competence:g})")
        )
    gold = signals.gold
    if (
        gold.accuracy is not None
        and gold.answered >= thresholds.gold_min_votes
        and gold.accuracy < thresholds.gold_accuracy
    ):
        flags.append(
            Flag(
                "gold",
                f"{gold.correct} of {gold.answered} gold pairs right ({gold.accuracy:.0%}, "
                f"under {thresholds.gold_accuracy:.0%})",
            )
        )
    consistency = signals.consistency
    if (
        consistency.share is not None
        and consistency.repeats >= thresholds.self_consistency_min_repeats
        and consistency.share < thresholds.self_consistency
    ):
        flags.append(
            Flag(
                "inconsistent",
                f"same answer on {consistency.consistent} of {consistency.repeats} repeated pairs "
                f"({consistency.share:.0%}, under {thresholds.self_consistency:.0%})",
            )
        )
    return tuple(flags)


def annotator_signals(
    votes: Sequence[Vote],
    *,
    thresholds: QualityThresholds,
    gold: Mapping[Any, str] | None = None,
    competences: Mapping[Any, float] | None = None,
) -> list[AnnotatorSignals]:
    """One row per annotator with every signal and its flags, in the order annotators first appear.

    `gold` maps gold items to their expected label. `competences` may be passed when already computed (MACE is the
    slow part: seconds for 100k votes); otherwise it is computed here.
    """
    gold = gold or {}
    firsts = first_votes(votes)
    if competences is None:
        competences = competence(firsts)
    by_annotator: dict[Hashable, list[Vote]] = defaultdict(list)
    for vote in firsts:
        by_annotator[vote.annotator].append(vote)
    repeats: dict[Hashable, list[Vote]] = defaultdict(list)
    for vote in votes:
        if vote.is_repeat:
            repeats[vote.annotator].append(vote)
    majority = majority_agreement(firsts)
    campaign_longer, _ = longer_share(firsts)
    rows = []
    for annotator, own in by_annotator.items():
        own_longer, own_longer_count = longer_share(own)
        row = AnnotatorSignals(
            annotator=annotator,
            votes=len(own),
            position=position_bias(own),
            speed=speed(own, floor_seconds=thresholds.fast_floor_seconds),
            longer_share=own_longer,
            longer_decisive=own_longer_count,
            campaign_longer_share=campaign_longer,
            tie_rate=label_share(own, "tie"),
            both_bad_rate=label_share(own, "both_bad"),
            majority=majority.get(annotator, MajorityAgreement(0, 0, 0)),
            gold=gold_accuracy(own, gold),
            consistency=self_consistency([*own, *repeats[annotator]]),
            competence=competences.get(annotator),
        )
        rows.append(replace(row, flags=annotator_flags(row, thresholds)))
    return rows
