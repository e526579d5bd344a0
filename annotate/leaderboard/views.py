"""The staff leaderboard page: ratings with intervals, the win-rate matrix and the lineage chart.

What the page adds to the standings (annotate.leaderboard.selectors) is presentation: the rank among the versions
that may still serve (a rejected candidate keeps its rating, listed apart, unranked), a mark on ratings resting on
few votes, the chart as dots with whiskers, and the matrix's cells as a heat map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.http import HttpResponse
from django.views.decorators.http import require_GET

from annotate.leaderboard.ratings import Record
from annotate.leaderboard.selectors import (
    FEW_VOTES,
    SCALE_DESCRIPTION,
    Standings,
    leaderboard_standings,
    standings_ranked,
)
from annotate.models import ModelVersion
from annotate.web.pages import AppRequest, render_page, staff_required

HEAT_STEPS = 10  # the matrix's colour steps: win rate 0 to 1 in tenths (CSS classes heat-0 ... heat-10)


class LeaderboardOptions(forms.Form):
    length_control = forms.ChoiceField(choices=[("0", "off"), ("1", "on")], required=False)


@dataclass(frozen=True)
class HeatCell:
    record: Record | None
    heat: int  # 0 to HEAT_STEPS, for the cell's CSS class; -1 on the diagonal and for versions never compared


def _heat_map(board: Standings) -> list[tuple[ModelVersion, list[HeatCell]]]:
    return [
        (
            row.version,
            [
                HeatCell(cell, -1 if cell is None or cell.win_rate is None else round(cell.win_rate * HEAT_STEPS))
                for cell in row.cells
            ],
        )
        for row in board.matrix
    ]


def _dots_and_whiskers(spec: dict[str, Any]) -> dict[str, Any]:
    """The lineage chart with its points never joined: versions are not a time series, a line reads as a trend."""
    return {**spec, "series": [{**series, "line": False} for series in spec.get("series", [])]}


@require_GET
@staff_required
def leaderboard(request: AppRequest) -> HttpResponse:
    options = LeaderboardOptions(request.GET)
    context: dict[str, Any] = {"options": options, "board": None, "scale": SCALE_DESCRIPTION, "few_votes": FEW_VOTES}
    if not options.is_valid():
        return render_page(request, "leaderboard/leaderboard.html", "leaderboard", context, status=400)
    board = leaderboard_standings(length_control=options.cleaned_data["length_control"] == "1")
    ranked, unranked = standings_ranked(board.standings)
    effect = board.length_effect
    context.update(
        board=board,
        ranked=ranked,
        unranked=unranked,
        heat_map=_heat_map(board),
        chart=_dots_and_whiskers(board.lineage_chart),
        length_points=abs(effect.points_twice_as_long) if effect else None,
    )
    return render_page(request, "leaderboard/leaderboard.html", "leaderboard", context)
