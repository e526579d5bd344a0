"""Vote quality on the Django side: read judgements into annotate.quality.agreement's records and compute the report.

Every function takes an optional queryset of judgements, so a caller can narrow it to a campaign, a time window or
a round's frozen votes (quality_judgements: the quality page's and GET /api/quality/'s filters). Gold answers and
repeat votes are optional inputs (pair id -> expected choice; the ids of repeat judgements), so the statistics do not
depend on how those are stored. quality_rows is the annotator table behind the page and the API.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import cast

from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db.models import Count, Max, QuerySet
from django.db.models.functions import Length
from django.utils import timezone

from annotate.models import AnnotatorStanding, Campaign, Judgement, Pair, TrainingRound
from annotate.quality.agreement import (
    LABELS,
    AgreementSummary,
    AnnotatorSignals,
    QualityThresholds,
    Vote,
    agreement_summary,
    annotator_signals,
    competence,
    pairwise_kappas,
)
from annotate.quality.columns import QualityRow, rows_sorted
from annotate.quality.edits import EditSignals, edit_signals


def quality_thresholds() -> QualityThresholds:
    """The flag thresholds from the QUALITY_* settings."""
    return QualityThresholds(
        position_bias_p_value=settings.QUALITY_POSITION_BIAS_P_VALUE,
        position_bias_share=settings.QUALITY_POSITION_BIAS_SHARE,
        fast_floor_seconds=settings.QUALITY_FAST_FLOOR_SECONDS,
        fast_median_seconds=settings.QUALITY_FAST_MEDIAN_SECONDS,
        competence=settings.QUALITY_MIN_COMPETENCE,
        competence_min_votes=settings.QUALITY_COMPETENCE_MIN_VOTES,
        gold_accuracy=settings.QUALITY_MIN_GOLD_ACCURACY,
        gold_min_votes=settings.QUALITY_GOLD_MIN_VOTES,
        self_consistency=settings.QUALITY_MIN_SELF_CONSISTENCY,
        self_consistency_min_repeats=settings.QUALITY_SELF_CONSISTENCY_MIN_REPEATS,
        kappa_min_shared_items=settings.QUALITY_KAPPA_MIN_SHARED_PAIRS,
    )


def votes_from_judgements(
    judgements: QuerySet[Judgement] | None = None, *, repeat_ids: Collection[int] = frozenset()
) -> list[Vote]:
    """The votes with an annotator (imported votes without one say nothing about a person), oldest first, in one
    query: answer lengths are measured by the database, the texts are never loaded."""
    queryset = Judgement.objects.all() if judgements is None else judgements
    repeats = frozenset(repeat_ids)
    rows = (
        queryset.filter(annotator__isnull=False)
        .annotate(length_a=Length("pair__completion_a__text"), length_b=Length("pair__completion_b__text"))
        .order_by("id")
        .values_list(
            "id",
            "annotator_id",
            "pair_id",
            "choice",
            "strength",
            "a_on_left",
            "time_spent_ms",
            "length_a",
            "length_b",
            "is_repeat",
            "ranking",
        )
    )
    votes = []
    for row in rows.iterator(chunk_size=5000):
        (judgement_id, annotator_id, pair_id, choice, strength, a_on_left, time_spent_ms, length_a, length_b, repeat,
         ranking) = row  # fmt: skip
        votes.append(
            Vote(
                annotator=annotator_id,
                item=pair_id,
                label=choice,
                strength=strength,
                a_on_left=a_on_left,
                seconds=None if time_spent_ms is None else time_spent_ms / 1000,
                a_is_longer=None if length_a == length_b else length_a > length_b,
                is_repeat=repeat or judgement_id in repeats,
                vote_id=judgement_id,
                ranking=None if ranking is None else tuple(ranking),
            )
        )
    return votes


@dataclass(frozen=True)
class AnnotatorRow:
    annotator_id: Hashable  # the user's id
    username: str
    signals: AnnotatorSignals


@dataclass(frozen=True)
class KappaRow:
    annotator: str
    other: str
    shared_pairs: int
    kappa: float | None


@dataclass(frozen=True)
class QualityReport:
    agreement: AgreementSummary
    annotators: list[AnnotatorRow]
    kappas: list[KappaRow]
    thresholds: QualityThresholds


def _check_gold(gold: Mapping[int, str]) -> None:
    wrong = {pair_id: expected for pair_id, expected in gold.items() if expected not in LABELS}
    if wrong:
        raise ValueError(f"gold answers must be one of {', '.join(LABELS)}; got {wrong}")


def quality_report(
    judgements: QuerySet[Judgement] | None = None,
    *,
    gold: Mapping[int, str] | None = None,
    repeat_ids: Collection[int] = frozenset(),
    thresholds: QualityThresholds | None = None,
) -> QualityReport:
    """Agreement, the per-annotator table with flags, and pairwise kappas, from two queries in all.

    `gold` maps a gold pair's id to its expected choice (a, b, tie or both_bad); `repeat_ids` are the ids of the
    judgements that are repeats. MACE takes a few seconds on 100k votes; everything else well under that.
    """
    gold = gold or {}
    _check_gold(gold)
    thresholds = thresholds or quality_thresholds()
    votes = votes_from_judgements(judgements, repeat_ids=repeat_ids)
    return report_from_votes(votes, gold=gold, thresholds=thresholds)


# The key changes with every new or changed vote among those read; this only bounds how long stale entries stay.
REPORT_CACHE_SECONDS = 24 * 3600


def quality_report_cached(
    judgements: QuerySet[Judgement], *, gold: Mapping[int, str], repeat_ids: Collection[int]
) -> QualityReport:
    """quality_report, kept in the cache under a key made of everything the report reads: which votes (the query
    itself, so every filter), their count, newest id and last change, the gold answers, the repeats and the flag
    thresholds. A new or changed vote, a pair marked gold or a changed setting makes a new key; staff decisions about
    annotators (pause, exclude) are not part of the report, so they need no recomputation."""
    thresholds = quality_thresholds()
    summary = judgements.aggregate(count=Count("id"), last_id=Max("id"), last_change=Max("updated_at"))
    parts = (
        str(judgements.order_by().values("id").query),
        sorted(summary.items()),
        sorted(gold.items()),
        sorted(repeat_ids),
        thresholds,
    )
    key = "quality-report:" + hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
    report = cache.get(key)
    if not isinstance(report, QualityReport):
        report = quality_report(judgements, gold=gold, repeat_ids=repeat_ids, thresholds=thresholds)
        cache.set(key, report, REPORT_CACHE_SECONDS)
    return report


def report_from_votes(votes: list[Vote], *, gold: Mapping[int, str], thresholds: QualityThresholds) -> QualityReport:
    """The report over votes already read (the benchmark adds simulated repeats to them)."""
    usernames: dict[Hashable, str] = dict(
        User.objects.filter(pk__in={vote.annotator for vote in votes}).values_list("pk", "username")
    )
    signals = annotator_signals(votes, thresholds=thresholds, gold=gold, competences=competence(votes))
    kappas = pairwise_kappas(votes, min_shared_items=thresholds.kappa_min_shared_items)
    return QualityReport(
        agreement=agreement_summary(votes),
        annotators=[AnnotatorRow(row.annotator, usernames.get(row.annotator, "?"), row) for row in signals],
        kappas=[
            KappaRow(
                usernames.get(kappa.annotator, "?"),
                usernames.get(kappa.other, "?"),
                kappa.shared_items,
                kappa.kappa,
            )
            for kappa in kappas
        ],
        thresholds=thresholds,
    )


# --- The quality page's filters and its annotator table -------------------------------------------------------


def quality_judgements(
    *,
    campaign: Campaign | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
    training_round: TrainingRound | None = None,
) -> QuerySet[Judgement]:
    """The votes on `campaign`'s pairs, cast from the start of `date_from` to the end of `date_to` (UTC), up to
    `training_round`'s cut-off (the votes it read); every bound optional. People's votes only: the AI judge is
    measured apart (annotate.judging.selectors)."""
    judgements = Judgement.objects.exclude(source=Judgement.Source.JUDGE)
    if campaign is not None:
        judgements = judgements.filter(pair__campaign=campaign)
    start = _day_start(date_from)
    if start is not None:
        judgements = judgements.filter(created_at__gte=start)
    after_end = _day_start(date_to + timedelta(days=1)) if date_to and date_to < date.max else None
    if after_end is not None:
        judgements = judgements.filter(created_at__lt=after_end)
    if training_round is not None:
        judgements = judgements.filter(pk__lte=training_round.last_judgement_id or 0)
    return judgements


def _day_start(day: date | None) -> datetime | None:
    """Midnight UTC starting `day`; None for no day, and for days at the calendar's edge (no bound needed there)."""
    if day is None or day <= date.min:
        return None
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


def quality_rows(judgements: QuerySet[Judgement], *, sort: str) -> tuple[QualityReport, list[QualityRow]]:
    """The report over `judgements` (cached: see quality_report_cached) and its annotator rows ordered by `sort` (a
    column of annotate.quality.columns, "-" in front for descending), with staff's decisions about each annotator
    read afresh.

    Gold answers come from the pairs (Pair.gold_choice) and repeats from the votes (Judgement.is_repeat)."""
    gold = dict(
        Pair.objects.exclude(gold_choice="")
        .filter(pk__in=judgements.values("pair_id"))
        .values_list("pk", "gold_choice")
    )
    repeat_ids = set(judgements.filter(is_repeat=True).values_list("pk", flat=True))
    report = quality_report_cached(judgements, gold=gold, repeat_ids=repeat_ids)
    standings = {
        standing.annotator_id: standing
        for standing in AnnotatorStanding.objects.filter(
            annotator_id__in=[row.annotator_id for row in report.annotators]
        )
    }
    edits = edit_signals(judgements)
    rows = []
    for row in report.annotators:
        standing = standings.get(cast(int, row.annotator_id))
        rows.append(
            QualityRow(
                annotator_id=cast(int, row.annotator_id),
                username=row.username,
                signals=row.signals,
                paused=bool(standing and standing.paused),
                votes_excluded=bool(standing and standing.votes_excluded),
                edits=edits.get(cast(int, row.annotator_id), EditSignals()),
            )
        )
    return report, rows_sorted(rows, sort)
