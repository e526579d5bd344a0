"""The dashboard's summary for staff clients: the same reads as the page's summary (annotate.dashboard.selectors)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.dashboard.selectors import dashboard_summary, recent_rounds, votes_per_day
from annotate.web.staff_api import NOT_STAFF


class ServingItem(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()


class PhaseItem(serializers.Serializer[Any]):
    text = serializers.CharField(help_text="What the round does now, as the round's page says it.")
    step = serializers.IntegerField(allow_null=True)
    max_steps = serializers.IntegerField(allow_null=True)
    elapsed_seconds = serializers.FloatField(allow_null=True, help_text="Spent in this phase so far.")
    estimate_seconds = serializers.FloatField(allow_null=True)
    estimate_kind = serializers.CharField(
        help_text="What estimate_seconds is: previous (the previous round's time), left (time left) or limit."
    )


class LatestRoundItem(serializers.Serializer[Any]):
    id = serializers.IntegerField(source="current_round.pk")
    status = serializers.CharField(source="current_round.status")
    headline = serializers.CharField(source="round_state.headline", help_text="The round page's badge.")
    tone = serializers.CharField(source="round_state.tone")
    decided_by = serializers.CharField(source="round_state.decided_by", help_text="Empty while nothing is decided.")
    phase = PhaseItem(source="round_phase", allow_null=True, help_text="While it runs; null otherwise.")


class ModelServerItem(serializers.Serializer[Any]):
    up = serializers.BooleanField(help_text="At least one replica answers.")
    answering = serializers.IntegerField(help_text="Replicas answering /health (asked at most every 15 s).")
    replicas = serializers.IntegerField()


class DashboardOutput(serializers.Serializer[Any]):
    serving = ServingItem(allow_null=True, help_text="The version annotators' pairs are sampled from.")
    ready_pairs = serializers.IntegerField(help_text="Pairs waiting for votes.")
    votes_today = serializers.IntegerField(help_text="Votes cast today (site time zone), repeat checks left out.")
    latest_round = serializers.SerializerMethodField()
    model_server = ModelServerItem(source="health")

    @extend_schema_field(LatestRoundItem(allow_null=True))  # null before the first round
    def get_latest_round(self, summary: Any) -> dict[str, Any] | None:
        return None if summary.current_round is None else dict(LatestRoundItem(summary).data)


@extend_schema(
    responses={200: DashboardOutput, 403: NOT_STAFF},
    summary="The dashboard's summary: serving version, ready pairs, votes today, latest round, model server health",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def dashboard(request: Request) -> Response:
    # Only what the summary reads: today's votes and the newest round, not the page's 30 days and 10 rounds.
    summary = dashboard_summary(days=votes_per_day(today=timezone.localdate(), days=1), rounds=recent_rounds(limit=1))
    return Response(DashboardOutput(summary).data)
