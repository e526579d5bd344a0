"""The staff leaderboard page: ratings with intervals, the win-rate matrix and the lineage chart."""

from __future__ import annotations

from typing import Any

from django import forms
from django.http import HttpResponse
from django.views.decorators.http import require_GET

from annotate.leaderboard.selectors import SCALE_DESCRIPTION, leaderboard_standings
from annotate.web.pages import AppRequest, render_page, staff_required


class LeaderboardOptions(forms.Form):
    length_control = forms.ChoiceField(choices=[("0", "off"), ("1", "on")], required=False)


@require_GET
@staff_required
def leaderboard(request: AppRequest) -> HttpResponse:
    options = LeaderboardOptions(request.GET)
    context: dict[str, Any] = {"options": options, "board": None, "scale": SCALE_DESCRIPTION}
    if not options.is_valid():
        return render_page(request, "leaderboard/leaderboard.html", "leaderboard", context, status=400)
    context["board"] = leaderboard_standings(length_control=options.cleaned_data["length_control"] == "1")
    return render_page(request, "leaderboard/leaderboard.html", "leaderboard", context)
