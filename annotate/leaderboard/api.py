"""GET /api/leaderboard/: the staff API's view of the leaderboard (annotate.leaderboard.selectors), staff only."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.leaderboard.ratings import Rating, Record
from annotate.leaderboard.selectors import SCALE_DESCRIPTION, Standings, leaderboard_standings, standings_ranked


class LeaderboardQuery(serializers.Serializer[Any]):
    length_control = serializers.BooleanField(
        default=False, help_text="Also fit with the answers' length difference as a covariate (slower)."
    )


class RatingItem(serializers.Serializer[Any]):
    rating = serializers.FloatField()
    lower = serializers.FloatField(help_text="95 % interval, from the bootstrap.")
    upper = serializers.FloatField()
    rank = serializers.IntegerField(
        allow_null=True,
        help_text="1 + the number of ranked versions whose interval lies wholly above; null for a rejected candidate "
        "(it keeps its rating but takes no rank, as on the page).",
    )


class RecordItem(serializers.Serializer[Any]):
    votes = serializers.IntegerField()
    wins = serializers.IntegerField()
    ties = serializers.IntegerField(help_text="Ties and both-bad votes.")
    losses = serializers.IntegerField()
    both_bad = serializers.IntegerField()
    win_rate = serializers.FloatField(allow_null=True, help_text="(wins + ties / 2) / votes.")


class StandingItem(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()
    parent_version = serializers.CharField(allow_null=True, help_text="The parent version's name.")
    status = serializers.CharField()
    rating = RatingItem()
    record = RecordItem()
    length_controlled = RatingItem(allow_null=True, help_text="Null unless length_control was asked for.")
    few_votes = serializers.BooleanField(help_text="Under the few-votes mark: an interval too wide to act on.")


class MatrixItem(RecordItem):
    version = serializers.CharField()
    opponent = serializers.CharField()


class LengthEffectItem(serializers.Serializer[Any]):
    coefficient = serializers.FloatField(help_text="Logits per unit of relative length difference (a-b)/(a+b).")
    lower = serializers.FloatField()
    upper = serializers.FloatField()
    points_twice_as_long = serializers.FloatField(help_text="Rating points for an answer twice as long as the other.")


class LeaderboardOutput(serializers.Serializer[Any]):
    scale = serializers.CharField()
    reference = serializers.CharField(allow_null=True, help_text="The version rated 1000 (the base model).")
    votes = serializers.IntegerField(help_text="Head-to-head votes: on pairs whose answers come from two versions.")
    bootstrap_rounds = serializers.IntegerField()
    ties = serializers.CharField()
    versions = StandingItem(many=True, help_text="The ranked versions best first, then rejected candidates.")
    matrix = MatrixItem(many=True, help_text="Each ordered pair of versions with votes between them.")
    length_effect = LengthEffectItem(allow_null=True)
    unconnected = serializers.ListField(
        child=serializers.CharField(), help_text="Versions with votes but no chain of votes to the reference."
    )


def _rating(rating: Rating | None, rank: int | None) -> dict[str, Any] | None:
    if rating is None:
        return None
    return {"rating": rating.rating, "lower": rating.lower, "upper": rating.upper, "rank": rank}


def _record(record: Record) -> dict[str, Any]:
    fields = ("votes", "wins", "ties", "losses", "both_bad", "win_rate")
    return {field: getattr(record, field) for field in fields}


def _output(board: Standings) -> dict[str, Any]:
    effect = board.length_effect
    ranked, unranked = standings_ranked(board.standings)
    return {
        "scale": SCALE_DESCRIPTION,
        "reference": board.reference.name if board.reference else None,
        "votes": board.votes,
        "bootstrap_rounds": board.bootstrap_rounds,
        "ties": "A tie, and a both-bad vote, count as half a win for each side.",
        "versions": [
            {
                "id": row.standing.version.pk,
                "name": row.standing.version.name,
                "parent_version": row.standing.version.parent.name if row.standing.version.parent else None,
                "status": row.standing.version.status,
                "rating": _rating(row.standing.rating, row.rank),
                "record": _record(row.standing.record),
                "length_controlled": _rating(row.standing.length_controlled, row.length_controlled_rank),
                "few_votes": row.few_votes,
            }
            for row in [*ranked, *unranked]
        ],
        "matrix": [
            {"version": row.version.name, "opponent": column.name, **_record(cell)}
            for row in board.matrix
            for column, cell in zip(board.matrix_columns, row.cells, strict=True)
            if cell is not None
        ],
        "length_effect": None
        if effect is None
        else {
            "coefficient": effect.coefficient,
            "lower": effect.lower,
            "upper": effect.upper,
            "points_twice_as_long": effect.points_twice_as_long,
        },
        "unconnected": [version.name for version in board.unconnected],
    }


@extend_schema(
    parameters=[LeaderboardQuery],
    responses={
        200: LeaderboardOutput,
        400: OpenApiResponse(description="Bad query parameters, named in `errors`."),
        403: OpenApiResponse(description="Not logged in (401) or not staff (403)."),
    },
    operation_id="leaderboard_retrieve",
    summary="Bradley-Terry ratings of the model versions from head-to-head votes, with 95 % intervals",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def leaderboard(request: Request) -> Response:
    query = LeaderboardQuery(data=request.query_params)
    query.is_valid(raise_exception=True)
    board = leaderboard_standings(length_control=query.validated_data["length_control"])
    return Response(LeaderboardOutput(_output(board)).data)
