"""The quality selectors (annotate/quality.py): votes given through the services, read back into the statistics."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest
from django.core.management import call_command

from annotate.annotation import services
from annotate.models import Judgement
from annotate.quality.agreement import QualityThresholds
from annotate.quality.selectors import (
    quality_report,
    quality_thresholds,
    votes_from_judgements,
)
from tests.readme import README, readme_defaults

SHORT, LONG = "Paris.", "The capital of France is Paris, on the Seine."


def _vote(user, choice_of_a: str, strength: int | None = None) -> Judgement:
    """Lease the next pair and vote for A, for B (given relative to the pair), tie or both_bad."""
    assignment = services.assignment_lease_next(annotator=user)
    assert assignment is not None
    choice = choice_of_a
    if choice_of_a in ("a", "b"):
        choice = "left" if (choice_of_a == "a") == assignment.a_on_left else "right"
    return services.judgement_record(
        annotator=user,
        pair_id=assignment.pair_id,
        choice=choice,
        strength=strength,
        rationale="",
        idempotency_key=uuid.uuid4(),
    ).judgement


def test_votes_are_read_relative_to_the_pair_with_sides_lengths_and_time(make_pair, annotator, tmp_path):
    make_pair(texts=(SHORT, LONG))
    make_pair(texts=("same", "size"))
    first = _vote(annotator, "a", 3)
    second = _vote(annotator, "tie")
    # Imported votes have no annotator: nothing to say about a person, so they are left out.
    path = tmp_path / "trl.jsonl"
    path.write_text(json.dumps({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}) + "\n")
    call_command("import_preferences", str(path), "--format", "trl", verbosity=0)
    assert Judgement.objects.count() == 3

    votes = votes_from_judgements()

    assert [(vote.vote_id, vote.annotator, vote.label) for vote in votes] == [
        (first.pk, annotator.pk, "a"),
        (second.pk, annotator.pk, "tie"),
    ]
    assert (votes[0].strength, votes[0].signed_strength, votes[0].a_on_left) == (3, 3, first.a_on_left)
    assert votes[0].chose_left == first.a_on_left  # A was chosen, so the left pick is wherever A was shown
    assert votes[0].a_is_longer is False and votes[0].chose_longer is False
    assert votes[1].a_is_longer is None  # "same" and "size": no longer answer
    assert votes[0].seconds == first.time_spent_ms / 1000
    assert votes_from_judgements(repeat_ids={second.pk})[1].is_repeat


def test_a_queryset_narrows_the_votes(make_pair, annotator, other_annotator):
    pairs = [make_pair(texts=(SHORT, LONG), required=2) for _ in range(3)]
    for _ in pairs:
        _vote(annotator, "a", 1)
        _vote(other_annotator, "b", 1)

    everything = quality_report(thresholds=QualityThresholds(kappa_min_shared_items=3))
    first_two = quality_report(Judgement.objects.filter(pair__in=pairs[:2]))

    assert (everything.agreement.votes, everything.agreement.items, everything.agreement.annotators) == (6, 3, 2)
    assert (first_two.agreement.votes, first_two.agreement.items) == (4, 2)
    # They always disagree.
    assert everything.agreement.alpha_nominal is not None and everything.agreement.alpha_nominal < 0
    [kappa] = everything.kappas
    assert kappa.shared_pairs == 3
    assert quality_report(thresholds=QualityThresholds(kappa_min_shared_items=4)).kappas == []


def test_alpha_is_undefined_with_one_annotator(make_pair, annotator):
    for _ in range(3):
        make_pair(texts=(SHORT, LONG))
        _vote(annotator, "a", 2)
    summary = quality_report().agreement
    assert (summary.alpha_nominal, summary.alpha_ordinal, summary.annotators) == (None, None, 1)


# QualityThresholds field -> the variable README's configuration table documents it under.
THRESHOLD_VARIABLES = {
    "position_bias_p_value": "QUALITY_POSITION_BIAS_P_VALUE", "position_bias_share": "QUALITY_POSITION_BIAS_SHARE",
    "fast_floor_seconds": "QUALITY_FAST_FLOOR_SECONDS", "fast_median_seconds": "QUALITY_FAST_MEDIAN_SECONDS",
    "competence": "QUALITY_MIN_COMPETENCE", "competence_min_votes": "QUALITY_COMPETENCE_MIN_VOTES",
    "gold_accuracy": "QUALITY_MIN_GOLD_ACCURACY", "gold_min_votes": "QUALITY_GOLD_MIN_VOTES",
    "self_consistency": "QUALITY_MIN_SELF_CONSISTENCY",
    "self_consistency_min_repeats": "QUALITY_SELF_CONSISTENCY_MIN_REPEATS",
    "kappa_min_shared_items": "QUALITY_KAPPA_MIN_SHARED_PAIRS",
}  # fmt: skip


def test_thresholds_come_from_the_settings(settings):
    documented = readme_defaults(README.read_text())
    assert set(THRESHOLD_VARIABLES) == {field.name for field in dataclasses.fields(QualityThresholds)}
    readme = QualityThresholds(**{field: float(documented[name]) for field, name in THRESHOLD_VARIABLES.items()})
    # Both the settings (as this test run has them) and the dataclass's own defaults are README's numbers.
    assert quality_thresholds() == readme
    assert QualityThresholds() == readme
    settings.QUALITY_MIN_COMPETENCE = 0.3
    settings.QUALITY_GOLD_MIN_VOTES = 12
    thresholds = quality_thresholds()
    assert (thresholds.competence, thresholds.gold_min_votes) == (0.3, 12)


def test_gold_answers_must_be_choices(db):
    with pytest.raises(ValueError, match="gold answers must be one of a, b, tie, both_bad"):
        quality_report(gold={1: "left"})


def test_report_on_simulated_annotators_flags_the_bad_ones(make_pair, django_assert_num_queries, monkeypatch):
    # Sides are dealt alternately instead of by coin: with coins, a careful annotator's left share over 30 votes
    # crosses the position-bias flag in about one run in a hundred, which is chance, not a fault.
    import itertools

    from annotate.annotation import services

    sides = itertools.cycle([0, 1])
    monkeypatch.setattr(services.secrets, "randbits", lambda bits: next(sides))
    # Ten annotators judge the same 30 pairs, shorter answers preferred; the shorter answer is A on even pairs.
    pairs = [make_pair(texts=(SHORT, LONG) if number % 2 == 0 else (LONG, SHORT), required=10) for number in range(30)]
    call_command(
        "simulate_annotators", "--prefer", "shorter", "--count", "300", "--seed", "3",
        "--profile", "careful*6", "--profile", "noisy:0.8*2", "--profile", "left-biased:0.95", "--profile", "random",
        verbosity=0,
    )  # fmt: skip
    assert Judgement.objects.count() == 300
    gold = {pair.pk: "a" if number % 2 == 0 else "b" for number, pair in enumerate(pairs[:8])}
    repeat = Judgement.objects.filter(annotator__username__contains="careful").order_by("id").first()
    assert repeat is not None

    with django_assert_num_queries(2):  # the votes, then the usernames
        report = quality_report(gold=gold, repeat_ids={repeat.pk})

    rows = {row.username.split("-", 2)[2]: row for row in report.annotators}
    assert len(rows) == 10
    assert report.agreement.annotators == 10 and report.agreement.items == 30
    assert report.agreement.votes == 299  # the repeat is not counted as a vote a second time
    assert 0.2 < (report.agreement.alpha_nominal or 0) < 0.9
    flags = {name: {flag.code for flag in row.signals.flags} for name, row in rows.items()}
    assert "position_bias" in flags["left-biased-0.95-9"]
    assert "low_competence" in flags["random-10"]
    assert "gold" not in flags["careful-1"]
    assert all(flags[f"careful-{number}"] == set() for number in range(1, 7)), flags
    careful = rows["careful-2"].signals
    assert (careful.gold.correct, careful.gold.answered) == (8, 8)
    assert careful.longer_share == 0.0 and careful.campaign_longer_share is not None
    assert careful.majority.share is not None and careful.majority.share > 0.9
    assert careful.speed.median_seconds is not None and careful.speed.median_seconds > 3
    assert (rows["random-10"].signals.competence or 0) < 0.5 < (careful.competence or 0)
    assert len(report.kappas) == 45  # every two of the ten share all 30 pairs
