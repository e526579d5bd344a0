"""The judge's trust statistics against independent implementations: kappa by its textbook formula, alpha by
NLTK-free hand counting for two coders, and the bootstrap interval against scipy.stats.bootstrap."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from scipy.stats import bootstrap

from annotate.judging.client import Reply, both_orders, reply_read, template_problem
from annotate.judging.trust import Bars, Trust, alpha, alpha_interval, kappa, people_majority, routing_refusal


def textbook_kappa(first: list[str], second: list[str]) -> float:
    count = len(first)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / count
    left, right = Counter(first), Counter(second)
    expected = sum(left[label] * right[label] for label in set(first) | set(second)) / count**2
    return (observed - expected) / (1 - expected)


def two_coder_alpha(first: list[str], second: list[str]) -> float:
    """Krippendorff's nominal alpha for two coders, no missing values: 1 - (n-1) * D_o / D_e over the pooled values."""
    pooled = Counter(first) + Counter(second)
    total = sum(pooled.values())
    observed = sum(a != b for a, b in zip(first, second, strict=True)) * 2
    expected = (total**2 - sum(value**2 for value in pooled.values())) / (total - 1)
    return 1 - observed / expected


@pytest.fixture
def labels() -> tuple[list[str], list[str]]:
    draw = random.Random(7)
    people = [draw.choice("ab") for _ in range(60)]
    judge = [label if draw.random() < 0.8 else draw.choice(["a", "b", "unsure"]) for label in people]
    return judge, people


def test_kappa_and_alpha_match_their_textbook_formulas(labels):
    judge, people = labels
    assert kappa(judge, people) == pytest.approx(textbook_kappa(judge, people))
    assert alpha(judge, people) == pytest.approx(two_coder_alpha(judge, people))


def test_the_alpha_interval_matches_scipys_percentile_bootstrap(labels):
    judge, people = labels
    ours = alpha_interval(judge, people, resamples=2000, seed=1)
    codes = {label: index for index, label in enumerate(sorted(set(judge) | set(people)))}
    theirs = bootstrap(
        (np.array([codes[v] for v in judge]), np.array([codes[v] for v in people])),
        lambda x, y: two_coder_alpha(list(x), list(y)),
        paired=True,
        vectorized=False,
        n_resamples=2000,
        method="percentile",
        random_state=np.random.default_rng(1),
    ).confidence_interval
    assert ours is not None
    assert ours[0] == pytest.approx(theirs.low, abs=0.04)
    assert ours[1] == pytest.approx(theirs.high, abs=0.04)
    assert ours[0] <= alpha(judge, people) <= ours[1]


def test_undefined_statistics_are_none():
    assert kappa([], []) is None
    assert alpha(["a", "a"], ["a", "a"]) is None
    assert alpha_interval(["a"], ["b"]) is None
    assert people_majority(["a", "b"]) is None and people_majority([]) is None
    assert people_majority(["a", "b", "a"]) == "a"


def test_routing_needs_evidence_gold_and_agreement():
    bars = Bars(min_gold_accuracy=0.8, min_kappa=0.6, min_evidence=10)
    good = Trust(gold=10, gold_correct=9, compared=10, kappa=0.7)
    assert routing_refusal(good, bars) is None
    assert "gold pairs" in str(routing_refusal(Trust(gold=3, gold_correct=3, compared=10, kappa=1.0), bars))
    assert "accuracy 0.50" in str(routing_refusal(Trust(gold=10, gold_correct=5, compared=10, kappa=0.9), bars))
    assert "kappa" in str(routing_refusal(Trust(gold=10, gold_correct=10, compared=10, kappa=None), bars))
    slipping = Trust(gold=10, gold_correct=10, compared=30, kappa=0.7, checks=10, checks_kappa=0.1)
    assert "checked pairs" in str(routing_refusal(slipping, bars))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"choice": "1", "confidence": 0.9}', ("1", 0.9)),
        ('Sure! {"choice": "2", "confidence": 85} done', ("2", 0.85)),
        ('{"choice": "tie"}', ("tie", None)),
        ('{"choice": "1", "confidence": "high"}', ("1", None)),
        ('{"choice": "1", "confidence": true}', ("1", None)),
        ("2. The second answer is better.", ("2", None)),
        ("Answer 1", ("1", None)),
        ('{"choice": "3"}', None),
        ("Both are fine.", None),
        ("", None),
        ("{" * 5000, None),
    ],
)
def test_replies_are_read_or_refused(text, expected):
    assert reply_read(text) == expected


def test_a_judge_that_flips_with_the_order_is_unsure():
    assert both_orders(Reply("1", 0.9, ""), Reply("2", 0.7, ""))[:3] == ("a", 0.7, True)
    assert both_orders(Reply("1", 0.9, ""), Reply("1", 0.9, ""))[:3] == ("unsure", 0.0, False)
    assert both_orders(Reply("tie", None, ""), Reply("tie", 0.9, ""))[:3] == ("tie", None, True)


def test_templates_name_exactly_their_fields():
    assert template_problem("{prompt} {first} {second} {{json}}") is None
    assert template_problem("{prompt} {first}") == "missing fields: second"
    assert "unknown" in str(template_problem("{prompt} {first} {second} {0}"))
    assert "unknown" in str(template_problem("{prompt.__class__} {first} {second}"))
