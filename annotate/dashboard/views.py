"""The staff dashboard, the page staff land on: first a summary of what staff decide on (the serving version, ready
pairs, votes today, the current round, the model server's health), then votes per day, active annotators, agreement
between annotators, ready pairs by campaign, the leaderboard, recent rounds with their outcomes, and answer length per
model version.

Every figure is aggregated in the database (a fixed number of queries whatever the data); every chart has a table
beside it with the same numbers, so the page reads without JavaScript.
"""

from __future__ import annotations

import datetime
import hashlib
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db.models import Avg, Count, F, Max, Min, Q, Sum
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from annotate.dashboard.selectors import SOURCES, DayVotes, dashboard_summary, recent_rounds, votes_per_day
from annotate.leaderboard.selectors import SCALE_DESCRIPTION, leaderboard_standings
from annotate.models import Campaign, Completion, Judgement, ModelVersion, Pair, TrainingRound
from annotate.quality.agreement import AgreementSummary, Vote, agreement_summary
from annotate.quality.selectors import votes_from_judgements
from annotate.rounds.status import RoundState, round_state
from annotate.web.pages import AppRequest, staff_required

# The chart starts at the first day with a vote (a new deployment has no 29 empty days to show), but shows a week.
CHART_MIN_DAYS = 7
AGREEMENT_RECENT_DAYS = 7
# The key changes with every new or changed vote; this bounds how far the recent window may lag behind the clock.
AGREEMENT_CACHE_SECONDS = 600


def days_charted(days: list[DayVotes]) -> list[DayVotes]:
    """The days the chart shows: from the first day with a vote, at least the last CHART_MIN_DAYS."""
    first_vote = next((index for index, day in enumerate(days) if day.total), len(days))
    return days[min(first_vote, max(0, len(days) - CHART_MIN_DAYS)) :]


def _votes_chart(days: list[DayVotes]) -> dict[str, Any]:
    """The spec static/pairloop/charts.js draws: votes are counts, so bars, one stacked part per source that voted."""
    shown = days_charted(days)
    voted = [index for index, _ in enumerate(SOURCES) if any(day.counts[index] for day in shown)] or [0]
    return {
        "title": f"Votes per day, last {len(shown)} days",
        "x": {"label": "Day", "categories": [day.day.strftime("%b %d") for day in shown]},
        "y": {"label": "Votes", "min": 0},
        "stacked": True,
        "series": [
            {"label": SOURCES[index].label, "values": [day.counts[index] for day in shown], "bar": True}
            for index in voted
        ],
    }


@dataclass(frozen=True)
class ActiveAnnotators:
    people_day: int
    people_week: int
    simulated_day: int
    simulated_week: int


def active_annotators(*, now: datetime.datetime) -> ActiveAnnotators:
    """Annotators with at least one vote in the last 24 hours and the last 7 days: people and simulated apart."""
    day_ago, week_ago = now - datetime.timedelta(hours=24), now - datetime.timedelta(days=7)
    human, simulated = Q(source=Judgement.Source.HUMAN), Q(source=Judgement.Source.SIMULATED)
    recent = Q(created_at__gte=day_ago)
    counts = Judgement.objects.filter(created_at__gte=week_ago, annotator__isnull=False).aggregate(
        people_day=Count("annotator", distinct=True, filter=human & recent),
        people_week=Count("annotator", distinct=True, filter=human),
        simulated_day=Count("annotator", distinct=True, filter=simulated & recent),
        simulated_week=Count("annotator", distinct=True, filter=simulated),
    )
    return ActiveAnnotators(**counts)


@dataclass(frozen=True)
class AgreementRow:
    scope: str
    summary: AgreementSummary


def agreement_overview(*, now: datetime.datetime) -> list[AgreementRow]:
    """Krippendorff's alpha (nominal and ordinal) with its counts over the last AGREEMENT_RECENT_DAYS days' votes, all
    votes, and each campaign's, from quality.agreement; repeat checks are left out there. Cached: it reads every
    vote, and the key changes whenever a vote is added or changed."""
    summary = Judgement.objects.aggregate(count=Count("id"), last_id=Max("id"), last_change=Max("updated_at"))
    fingerprint = hashlib.sha256(repr(sorted(summary.items())).encode()).hexdigest()[:32]
    key = f"dashboard-agreement:{fingerprint}"
    rows = cache.get(key)
    if not isinstance(rows, list):
        rows = _agreement_rows(now=now)
        cache.set(key, rows, AGREEMENT_CACHE_SECONDS)
    return rows


def _agreement_rows(*, now: datetime.datetime) -> list[AgreementRow]:
    since = now - datetime.timedelta(days=AGREEMENT_RECENT_DAYS)
    every_vote = votes_from_judgements()
    rows = [
        AgreementRow(
            f"Last {AGREEMENT_RECENT_DAYS} days",
            agreement_summary(votes_from_judgements(Judgement.objects.filter(created_at__gte=since))),
        ),
        AgreementRow("All time", agreement_summary(every_vote)),
    ]
    campaign_of: dict[Hashable, str | None] = dict(  # the vote's item is its pair's id
        Pair.objects.filter(judgements__isnull=False).values_list("pk", "campaign__name").distinct().order_by()
    )
    by_campaign: dict[str, list[Vote]] = defaultdict(list)
    for vote in every_vote:
        by_campaign[campaign_of.get(vote.item) or "(no campaign)"].append(vote)
    rows += [AgreementRow(f"Campaign {name}", agreement_summary(votes)) for name, votes in sorted(by_campaign.items())]
    return rows


@dataclass(frozen=True)
class CampaignReady:
    name: str
    title: str
    is_active: bool
    pairs: int  # open pairs: at least one free place
    places: int  # free places over those pairs: votes still wanted, less live leases


def ready_pairs_by_campaign() -> list[CampaignReady]:
    """Open pairs (Pair.objects.open(): a free place, not gold) and their free places, for every campaign."""
    open_pairs = (
        Pair.objects.open()
        .values("campaign_id")
        .annotate(pairs=Count("id"), places=Sum(F("judgements_required") - F("judgement_count") - F("lease_count")))
        .order_by()
    )
    by_campaign: dict[int | None, tuple[int, int]] = {
        row["campaign_id"]: (row["pairs"], row["places"]) for row in open_pairs
    }
    result = [
        CampaignReady(campaign.name, campaign.title, campaign.is_active, *by_campaign.pop(campaign.pk, (0, 0)))
        for campaign in Campaign.objects.only("name", "title", "is_active").order_by("name")
    ]
    if None in by_campaign:  # pairs made before campaigns existed
        result.append(CampaignReady("(no campaign)", "", True, *by_campaign[None]))
    return result


@dataclass(frozen=True)
class VersionLength:
    name: str
    status: str
    answers: int
    mean_tokens: float
    shortest: int
    longest: int


def answer_length_per_version() -> list[VersionLength]:
    """Mean length in tokens of the answers sampled from each version (imported answers have no token count)."""
    rows = (
        Completion.objects.filter(completion_tokens__isnull=False)
        .exclude(model_version__status=ModelVersion.Status.EXTERNAL)
        .values("model_version_id", "model_version__name", "model_version__status")
        .annotate(
            answers=Count("id"),
            mean_tokens=Avg("completion_tokens"),
            shortest=Min("completion_tokens"),
            longest=Max("completion_tokens"),
        )
        .order_by("model_version_id")
    )
    return [
        VersionLength(
            name=row["model_version__name"],
            status=row["model_version__status"],
            answers=row["answers"],
            mean_tokens=float(row["mean_tokens"]),
            shortest=row["shortest"],
            longest=row["longest"],
        )
        for row in rows
    ]


def _length_chart(lengths: list[VersionLength]) -> dict[str, Any]:
    return {
        "title": "Mean answer length per version",
        "x": {"label": "Model version (oldest first)", "categories": [length.name for length in lengths]},
        "y": {"label": "Tokens", "min": 0},
        # Points only: versions in creation order are not a time series (siblings sit side by side).
        "series": [
            {"label": "Mean tokens", "values": [round(length.mean_tokens, 1) for length in lengths], "line": False}
        ],
    }


def _with_states(rounds: list[TrainingRound]) -> list[tuple[TrainingRound, RoundState]]:
    """Each round with the words its own page uses for it (annotate.rounds.status), so the two never disagree."""
    return [(training_round, round_state(training_round)) for training_round in rounds]


@require_GET
@staff_required
def dashboard(request: AppRequest) -> HttpResponse:
    days = votes_per_day(today=timezone.localdate())
    lengths = answer_length_per_version()
    rounds = recent_rounds()
    context = {
        "summary": dashboard_summary(days=days, rounds=rounds),
        "days": days,
        "sources": SOURCES,
        "source_totals": [sum(day.counts[index] for day in days) for index in range(len(SOURCES))],
        "votes_chart": _votes_chart(days),
        "active": active_annotators(now=timezone.now()),
        "agreement": agreement_overview(now=timezone.now()),
        "campaigns": ready_pairs_by_campaign(),
        "board": leaderboard_standings(),
        "scale": SCALE_DESCRIPTION,
        "rounds": _with_states(rounds),
        "lengths": lengths,
        "length_chart": _length_chart(lengths),
    }
    return render(request, "dashboard/dashboard.html", context)


@require_GET
@login_required
def start(request: AppRequest) -> HttpResponse:
    """Where a login lands (LOGIN_REDIRECT_URL): staff on the dashboard, annotators on the annotate page."""
    return HttpResponseRedirect(reverse("dashboard" if request.user.is_staff else "annotate"))
