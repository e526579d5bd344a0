"""The reads behind the dashboard's summary, shared by the page and GET /api/dashboard/: the serving version, ready
pairs, votes per day (today's is the summary's), the latest rounds with their state and phase, and the model
server's health."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone

from annotate.models import Judgement, ModelVersion, TrainingRound
from annotate.rounds.status import RoundPhase, RoundState, round_phase, round_state
from annotate.sampling.generation import ModelServerClient, model_server_urls
from annotate.sampling.services import pairs_ready_count

DAYS_SHOWN = 30
# The model server's health is asked at most this often (every process shares the answer through the cache).
HEALTH_CACHE_SECONDS = 15
HEALTH_TIMEOUT_SECONDS = 2.0
ROUNDS_SHOWN = 10
SOURCES = list(Judgement.Source)  # human, simulated, imported: the order of the columns and chart lines


@dataclass(frozen=True)
class DayVotes:
    day: datetime.date
    counts: list[int]  # one per SOURCES
    total: int


def votes_per_day(*, today: datetime.date, days: int = DAYS_SHOWN) -> list[DayVotes]:
    """Votes given on each of the last `days` days (today included, in the site's time zone), by source.

    Repeat checks (a pair shown again to measure an annotator's consistency) are not votes on the pair: left out.
    """
    first = today - datetime.timedelta(days=days - 1)
    since = timezone.make_aware(datetime.datetime.combine(first, datetime.time.min))
    rows = (
        Judgement.objects.filter(created_at__gte=since, is_repeat=False)
        .annotate(day=TruncDate("created_at"))
        .values("day", "source")
        .annotate(votes=Count("id"))
        .order_by()
    )
    counts = {(row["day"], row["source"]): row["votes"] for row in rows}
    result = []
    for offset in range(days):
        day = first + datetime.timedelta(days=offset)
        by_source = [counts.get((day, source.value), 0) for source in SOURCES]
        result.append(DayVotes(day=day, counts=by_source, total=sum(by_source)))
    return result


@dataclass(frozen=True)
class ModelServerHealth:
    answering: int
    replicas: int

    @property
    def up(self) -> bool:
        return self.answering > 0


def model_server_health() -> ModelServerHealth:
    """How many of the model server's replicas answer /health, asked with a short timeout and cached briefly: the
    dashboard answers fast whether the server is up, loading, or gone."""
    urls = model_server_urls()
    key = "dashboard-model-server-health:" + hashlib.sha256("|".join(urls).encode()).hexdigest()[:16]
    answering = cache.get(key)
    if not isinstance(answering, int):
        answering = 0
        for url in urls:
            with ModelServerClient(url, settings.VLLM_API_KEY, HEALTH_TIMEOUT_SECONDS) as client:
                answering += client.is_healthy()
        cache.set(key, answering, HEALTH_CACHE_SECONDS)
    return ModelServerHealth(answering=answering, replicas=len(urls))


@dataclass(frozen=True)
class Summary:
    """What staff decide on first."""

    serving: ModelVersion | None
    ready_pairs: int
    votes_today: int
    current_round: TrainingRound | None
    round_state: RoundState | None
    round_phase: RoundPhase | None
    health: ModelServerHealth


def dashboard_summary(*, days: list[DayVotes], rounds: list[TrainingRound]) -> Summary:
    latest = rounds[0] if rounds else None
    return Summary(
        serving=ModelVersion.objects.serving(),
        ready_pairs=pairs_ready_count(),
        votes_today=days[-1].total if days else 0,
        current_round=latest,
        round_state=round_state(latest) if latest else None,
        round_phase=round_phase(latest) if latest else None,
        health=model_server_health(),
    )


def recent_rounds(limit: int = ROUNDS_SHOWN) -> list[TrainingRound]:
    return list(
        TrainingRound.objects.select_related("parent_version", "result_version").defer("log_tail", "config")[:limit]
    )
