"""How far a judge can be trusted, from plain labels: agreement with the people's majority (Cohen's kappa,
Krippendorff's alpha with a bootstrap interval), accuracy on gold pairs, and how often it flips with the order.

No Django here (annotate.judging.selectors reads the records); a statistic that cannot be computed is None."""

from __future__ import annotations

import math
import random
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import krippendorff
import numpy as np
from sklearn.metrics import cohen_kappa_score

UNSURE = "unsure"


def people_majority(choices: Iterable[str]) -> str | None:
    """The most common of the people's choices on one pair; None for no votes or a draw at the top."""
    counts = Counter(choices).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two label sequences (scikit-learn); None with no items or when chance agreement is total."""
    if not first:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(cohen_kappa_score(list(first), list(second)))
    return None if math.isnan(value) else value


def alpha(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Krippendorff's alpha (nominal) of two coders over the same items; None when it is undefined (one value)."""
    codes = {label: index for index, label in enumerate(sorted({*first, *second}))}
    if len(codes) < 2:
        return None
    data = np.array([[codes[label] for label in first], [codes[label] for label in second]], dtype=float)
    try:
        value = float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    except (ValueError, ZeroDivisionError):
        return None
    return None if math.isnan(value) else value


def alpha_interval(
    first: Sequence[str], second: Sequence[str], *, resamples: int = 300, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """A percentile bootstrap interval of `alpha` over the items (resampled with replacement); resamples where alpha
    is undefined are left out. None with fewer than 5 items or too few defined resamples."""
    count = len(first)
    if count < 5:
        return None
    draw = random.Random(seed)
    values = []
    for _ in range(resamples):
        picks = [draw.randrange(count) for _ in range(count)]
        value = alpha([first[index] for index in picks], [second[index] for index in picks])
        if value is not None:
            values.append(value)
    if len(values) < resamples // 2:
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Trust:
    """What a judge's verdicts show (one prompt version or all): the quality page, the API and routing read it."""

    verdicts: int = 0  # answered (done), unsure ones included
    failures: int = 0
    flips: int = 0  # answered differently with the sides swapped
    compared: int = 0  # pairs with a people's majority that it answered (gold aside)
    kappa: float | None = None
    alpha: float | None = None
    alpha_interval: tuple[float, float] | None = None
    agreement: float | None = None  # share of compared pairs where it chose what the people's majority chose
    gold: int = 0
    gold_correct: int = 0
    checks: int = 0  # pairs it could have settled, sent to people, now with a majority
    checks_agreeing: int = 0
    checks_kappa: float | None = None
    settled: int = 0
    votes_saved: int = 0
    settled_unchecked: int = 0  # pairs it settled alone that no person has voted on (judging.selectors.judge_trust)

    @property
    def flip_rate(self) -> float | None:
        return self.flips / self.verdicts if self.verdicts else None

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold if self.gold else None

    @property
    def checks_agreement(self) -> float | None:
        return self.checks_agreeing / self.checks if self.checks else None


@dataclass(frozen=True)
class Bars:
    """The staff's thresholds routing must stay above."""

    min_gold_accuracy: float
    min_kappa: float
    min_evidence: int


def routing_refusal(trust: Trust, bars: Bars) -> str | None:
    """Why this trust does not earn routing (the first reason a page shows), or None when it does."""
    if trust.gold < bars.min_evidence:
        return f"judged {trust.gold} gold pairs; routing needs {bars.min_evidence}"
    if trust.compared < bars.min_evidence:
        return f"judged {trust.compared} pairs people voted on; routing needs {bars.min_evidence}"
    accuracy = trust.gold_accuracy or 0.0
    if accuracy < bars.min_gold_accuracy:
        return f"gold accuracy {accuracy:.2f} is below {bars.min_gold_accuracy:.2f}"
    if trust.kappa is None or trust.kappa < bars.min_kappa:
        shown = "undefined" if trust.kappa is None else f"{trust.kappa:.2f}"
        return f"Cohen's kappa with people {shown} is below {bars.min_kappa:.2f}"
    if trust.checks >= bars.min_evidence and (trust.checks_kappa is None or trust.checks_kappa < bars.min_kappa):
        shown = "undefined" if trust.checks_kappa is None else f"{trust.checks_kappa:.2f}"
        return f"on its checked pairs, kappa with people {shown} is below {bars.min_kappa:.2f}"
    return None


def trust_measure(
    *,
    answered: Sequence[tuple[str, bool]],
    failures: int,
    compared: Sequence[tuple[str, str]],
    gold: Sequence[tuple[str, str]],
    checks: Sequence[tuple[str, str]],
    settled: int = 0,
    votes_saved: int = 0,
    settled_unchecked: int = 0,
) -> Trust:
    """`answered`: (choice, consistent) of each answered verdict; `compared`: (judge, people's majority) per
    people-voted pair; `gold`: (judge, expected); `checks`: (judge, people's majority) on its checked pairs."""
    judge_labels = [judge for judge, _ in compared]
    people_labels = [people for _, people in compared]
    agreeing = sum(judge == people for judge, people in compared)
    return Trust(
        verdicts=len(answered),
        failures=failures,
        flips=sum(not consistent for _, consistent in answered),
        compared=len(compared),
        kappa=kappa(judge_labels, people_labels),
        alpha=alpha(judge_labels, people_labels),
        alpha_interval=alpha_interval(judge_labels, people_labels),
        agreement=agreeing / len(compared) if compared else None,
        gold=len(gold),
        gold_correct=sum(judge == expected for judge, expected in gold),
        checks=len(checks),
        checks_agreeing=sum(judge == people for judge, people in checks),
        checks_kappa=kappa([judge for judge, _ in checks], [people for _, people in checks]),
        settled=settled,
        votes_saved=votes_saved,
        settled_unchecked=settled_unchecked,
    )
