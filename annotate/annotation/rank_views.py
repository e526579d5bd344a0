"""The ranking form of the annotate page (templates/annotate/_rank.html): one POST, with or without htmx."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.views.decorators.http import require_POST

from annotate.annotation import rankings
from annotate.annotation.views import VoteForm, vote_form_record
from annotate.models import MAX_ANSWERS_PER_PAIR
from annotate.web.pages import AppRequest

RANK_VALUES = [(rank, str(rank)) for rank in range(1, MAX_ANSWERS_PER_PAIR + 1)]


class RankForm(VoteForm):
    """A ranking as the page posts it: rank_<place> per answer in screen order (1 the best), or all bad; the
    rationale and the idempotency key as a vote's."""

    choice = forms.ChoiceField(choices=[(choice, choice) for choice in rankings.RANKING_CHOICES])
    strength = None  # type: ignore[assignment]  # a ranking has no strength

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for place in range(MAX_ANSWERS_PER_PAIR):
            self.fields[f"rank_{place}"] = forms.TypedChoiceField(
                choices=RANK_VALUES, coerce=int, required=False, empty_value=None
            )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        given = [cleaned.get(f"rank_{place}") for place in range(MAX_ANSWERS_PER_PAIR)]
        while given and given[-1] is None:
            given.pop()
        cleaned["ranks"] = given
        if cleaned.get("choice") == rankings.RANK and None in given:
            self.add_error(None, "give every answer a rank (or choose all bad)")
        return cleaned


@require_POST
@login_required
def rank(request: AppRequest, pair_id: int) -> HttpResponse:
    return vote_form_record(request, pair_id, RankForm(request.POST))
