"""The staff leaderboard page: ratings with intervals, the win-rate matrix and the lineage chart."""

from __future__ import annotations

from django import forms
from django.http import HttpResponse
from django.views.decorators.http import require_GET

from annotate.leaderboard import SCALE_DESCRIPTION, leaderboard_standings
from annotate.web import AppRequest, render_page, staff_required


class LeaderboardOptions(forms.Form):
    length_control = forms.TypedChoiceField(
        choices=[("0", "off"), ("1", "on")], coerce=lambda value: value == "1", required=False, empty_value=False
    )


@require_GET
@staff_required
def leaderboard(request: AppRequest) -> HttpResponse:
    options = LeaderboardOptions(request.GET)
    if not options.is_valid():
        context = {"options": options, "board": None}
        return render_page(request, "leaderboard/leaderboard.html", "leaderboard", context, status=400)
    board = leaderboard_standings(length_control=options.cleaned_data["length_control"])
    context = {"options": options, "board": board, "scale": SCALE_DESCRIPTION}
    return render_page(request, "leaderboard/leaderboard.html", "leaderboard", context)
