"""Which votes vote quality reads, and the annotator table's order: the quality pages' filter form and the query
parameters of GET /api/quality/ (annotate.quality.api builds its schema's parameters from these fields and their
help)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.db.models import QuerySet
from django.http import QueryDict

from annotate.models import Campaign, Judgement, TrainingRound
from annotate.quality.columns import DEFAULT_SORT, SORT_CHOICES
from annotate.quality.selectors import quality_judgements


class QualityFilters(forms.Form):
    """Which votes the statistics read and how the table is sorted; the pages' form and the API's parameters."""

    campaign = forms.ModelChoiceField(
        queryset=Campaign.objects.all(),
        required=False,
        empty_label="every campaign",
        to_field_name="pk",
        help_text="Only the votes on this campaign's pairs (the API takes its id).",
    )
    date_from = forms.DateField(required=False, help_text="Votes cast on or after this day (UTC).")
    date_to = forms.DateField(required=False, help_text="Votes cast on or before this day (UTC).")
    round = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=2**63 - 1,
        label="Training round",
        help_text="A training round's id: only the votes up to its cut-off (the votes it read).",
    )
    sort = forms.ChoiceField(
        choices=SORT_CHOICES,
        required=False,
        help_text=f"A column of the annotator table; a leading '-' sorts high first ({DEFAULT_SORT} when left out).",
    )

    def clean_round(self) -> TrainingRound | None:
        round_id = self.cleaned_data.get("round")
        if round_id is None:
            return None
        training_round = TrainingRound.objects.filter(pk=round_id).first()
        if training_round is None:
            raise forms.ValidationError(f"no training round {round_id}")
        return training_round

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and end < start:
            self.add_error("date_to", "must be on or after date_from")
        cleaned["sort"] = cleaned.get("sort") or DEFAULT_SORT
        return cleaned

    def judgements(self) -> QuerySet[Judgement]:
        """The votes these (valid) filters select."""
        values = self.cleaned_data
        return quality_judgements(
            campaign=values.get("campaign"),
            date_from=values.get("date_from"),
            date_to=values.get("date_to"),
            training_round=values.get("round"),
        )

    def query(self, **changes: str) -> str:
        """The filters as a query string (the submitted values), with `changes` applied; empty values dropped."""
        data = QueryDict(mutable=True)
        for name in self.fields:
            value = changes.get(name, self.data.get(name, ""))
            if value:
                data[name] = value
        return data.urlencode()
