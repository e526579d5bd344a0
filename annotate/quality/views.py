"""Staff pages for vote quality: agreement and the annotator table (/quality/), and one annotator's votes with the
decisions about them (/quality/annotators/<username>/).

The filters (campaign, time window, a training round's votes) and the table's rows and sorting are defined here once
and used by the page and by GET /api/quality/ (annotate/staff_api.py). The statistics are annotate.quality.selectors's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, cast

from django import forms
from django.contrib import messages
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from annotate.annotation import services
from annotate.errors import Invalid
from annotate.models import AnnotatorAction, AnnotatorStanding, Campaign, Judgement, Pair, TrainingRound
from annotate.quality.agreement import Flag
from annotate.quality.selectors import AnnotatorRow, QualityReport, quality_report_cached
from annotate.web.pages import AppRequest, render_page, staff_required

VOTES_PER_PAGE = 20


@dataclass(frozen=True)
class QualityRow:
    """One annotator's line in the table: every signal flattened, their flags, and what staff decided about them."""

    annotator_id: int
    username: str
    votes: int
    left_share: float | None
    left_decisive: int
    position_p_value: float | None
    median_seconds: float | None
    share_under_floor: float | None
    longer_share: float | None
    longer_decisive: int
    campaign_longer_share: float | None
    tie_rate: float | None
    both_bad_rate: float | None
    gold_accuracy: float | None
    gold_answered: int
    self_consistency: float | None
    repeats: int
    majority_agreement: float | None
    majority_compared: int
    competence: float | None
    flags: tuple[Flag, ...]
    paused: bool
    votes_excluded: bool


def _row(row: AnnotatorRow, standing: AnnotatorStanding | None) -> QualityRow:
    signals = row.signals
    return QualityRow(
        annotator_id=cast(int, row.annotator_id),
        username=row.username,
        votes=signals.votes,
        left_share=signals.position.left_share,
        left_decisive=signals.position.decisive,
        position_p_value=signals.position.p_value,
        median_seconds=signals.speed.median_seconds,
        share_under_floor=signals.speed.share_under_floor,
        longer_share=signals.longer_share,
        longer_decisive=signals.longer_decisive,
        campaign_longer_share=signals.campaign_longer_share,
        tie_rate=signals.tie_rate,
        both_bad_rate=signals.both_bad_rate,
        gold_accuracy=signals.gold.accuracy,
        gold_answered=signals.gold.answered,
        self_consistency=signals.consistency.share,
        repeats=signals.consistency.repeats,
        majority_agreement=signals.majority.share,
        majority_compared=signals.majority.compared,
        competence=signals.competence,
        flags=signals.flags,
        paused=bool(standing and standing.paused),
        votes_excluded=bool(standing and standing.votes_excluded),
    )


# Sort key -> (column heading, the value sorted on). Missing values (None) always sort last, whichever the direction.
SORT_COLUMNS: dict[str, tuple[str, Callable[[QualityRow], Any]]] = {
    "annotator": ("Annotator", lambda row: row.username.lower()),
    "votes": ("Votes", lambda row: row.votes),
    "left_share": ("Left picks", lambda row: row.left_share),
    "position_p_value": ("p (position)", lambda row: row.position_p_value),
    "median_seconds": ("Median s", lambda row: row.median_seconds),
    "share_under_floor": ("Under floor", lambda row: row.share_under_floor),
    "longer_share": ("Longer picked", lambda row: row.longer_share),
    "tie_rate": ("Ties", lambda row: row.tie_rate),
    "both_bad_rate": ("Both bad", lambda row: row.both_bad_rate),
    "gold_accuracy": ("Gold accuracy", lambda row: row.gold_accuracy),
    "self_consistency": ("Self-consistency", lambda row: row.self_consistency),
    "majority_agreement": ("With majority", lambda row: row.majority_agreement),
    "competence": ("Competence", lambda row: row.competence),
    "flags": ("Flags", lambda row: len(row.flags)),
    "standing": ("Standing", lambda row: (row.paused, row.votes_excluded)),
}
DEFAULT_SORT = "-flags"
SORT_CHOICES = [(f"{prefix}{key}", f"{label}{suffix}") for key, (label, _) in SORT_COLUMNS.items()
                for prefix, suffix in (("", ", ascending"), ("-", ", descending"))]  # fmt: skip


def rows_sorted(rows: list[QualityRow], sort: str) -> list[QualityRow]:
    """Rows by `sort` (a SORT_COLUMNS key, "-" in front for descending), then by name; missing values last."""
    descending, key = sort.startswith("-"), sort.removeprefix("-")
    value_of = SORT_COLUMNS[key][1]
    by_name = sorted(rows, key=lambda row: row.username.lower())
    known = [row for row in by_name if value_of(row) is not None]
    unknown = [row for row in by_name if value_of(row) is None]
    return sorted(known, key=value_of, reverse=descending) + unknown


class QualityFilters(forms.Form):
    """Which votes the statistics read; the page's form and the API's query parameters."""

    campaign = forms.ModelChoiceField(
        queryset=Campaign.objects.all(), required=False, empty_label="every campaign", to_field_name="pk"
    )
    date_from = forms.DateField(required=False, help_text="Votes cast on or after this day (UTC).")
    date_to = forms.DateField(required=False, help_text="Votes cast on or before this day (UTC).")
    round = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=2**63 - 1,
        label="Training round",
        help_text="Only the votes up to this round's cut-off (the votes it read).",
    )
    sort = forms.ChoiceField(choices=SORT_CHOICES, required=False)

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
        judgements = Judgement.objects.all()
        if values.get("campaign"):
            judgements = judgements.filter(pair__campaign=values["campaign"])
        start = _day_start(values.get("date_from"))
        if start is not None:
            judgements = judgements.filter(created_at__gte=start)
        end = values.get("date_to")
        after_end = _day_start(end + timedelta(days=1)) if end and end < date.max else None
        if after_end is not None:
            judgements = judgements.filter(created_at__lt=after_end)
        if values.get("round"):
            judgements = judgements.filter(pk__lte=values["round"].last_judgement_id or 0)
        return judgements

    def query(self, **changes: str) -> str:
        """The filters as a query string (the submitted values), with `changes` applied; empty values dropped."""
        data = QueryDict(mutable=True)
        for name in self.fields:
            value = changes.get(name, self.data.get(name, ""))
            if value:
                data[name] = value
        return data.urlencode()


def _day_start(day: date | None) -> datetime | None:
    """Midnight UTC starting `day`; None for no day, and for days at the calendar's edge (no bound needed there)."""
    if day is None or day <= date.min:
        return None
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


def quality_rows(filters: QualityFilters) -> tuple[QualityReport, list[QualityRow]]:
    """The report over the filtered votes (cached: see quality_report_cached) and its annotator rows in the asked
    order, with staff's decisions about each annotator read afresh.

    Gold answers come from the pairs (Pair.gold_choice) and repeats from the votes (Judgement.is_repeat)."""
    judgements = filters.judgements()
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
    rows = [_row(row, standings.get(cast(int, row.annotator_id))) for row in report.annotators]
    return report, rows_sorted(rows, filters.cleaned_data["sort"])


@dataclass(frozen=True)
class Heading:
    label: str
    url: str
    direction: str  # "ascending", "descending" or "" when the table is not sorted by this column


def _headings(request: AppRequest, filters: QualityFilters) -> list[Heading]:
    current = filters.cleaned_data["sort"]
    headings = []
    for key, (label, _) in SORT_COLUMNS.items():
        direction = "ascending" if current == key else "descending" if current == f"-{key}" else ""
        # A click on the sorted column turns it round; on another, numbers start high-first, names A-first.
        new = f"-{key}" if direction == "ascending" or (not direction and key != "annotator") else key
        headings.append(Heading(label, f"{request.path}?{filters.query(sort=new)}", direction))
    return headings


@require_GET
@staff_required
def quality(request: AppRequest) -> HttpResponse:
    filters = QualityFilters(request.GET)
    context: dict[str, Any] = {"filters": filters, "report": None}
    if not filters.is_valid():
        return render_page(request, "quality/quality.html", "quality", context, status=400)
    report, rows = quality_rows(filters)
    context.update(report=report, rows=rows, headings=_headings(request, filters), filter_query=filters.query(sort=""))
    return render_page(request, "quality/quality.html", "quality", context)


class AnnotatorActionForm(forms.Form):
    action = forms.ChoiceField(choices=AnnotatorAction.Action.choices)
    reason = forms.CharField(max_length=2000, widget=forms.TextInput(attrs={"size": 40}), strip=True)


def _vote_view(vote: Judgement) -> dict[str, Any]:
    """A vote as its annotator saw it: the answer on the left and on the right, and the side they chose."""
    pair = vote.pair
    a_on_left = True if vote.a_on_left is None else vote.a_on_left  # imported votes: A, B as stored
    left, right = (pair.completion_a, pair.completion_b) if a_on_left else (pair.completion_b, pair.completion_a)
    return {
        "vote": vote,
        "left": left.text,
        "right": right.text,
        "left_label": "A" if a_on_left else "B",
        "right_label": "B" if a_on_left else "A",
        "sides_known": vote.a_on_left is not None,
        "seconds": None if vote.time_spent_ms is None else vote.time_spent_ms / 1000,
        "gold_right": None if not pair.gold_choice else vote.choice == pair.gold_choice,
    }


def _annotator_page(
    request: AppRequest, annotator: User, action_form: AnnotatorActionForm | None = None, status: int = 200
) -> HttpResponse:
    filters = QualityFilters(request.GET)
    standing = AnnotatorStanding.objects.filter(annotator=annotator).first()
    context: dict[str, Any] = {
        "annotator": annotator,
        "filters": filters,
        "action_form": action_form,
        "decisions": AnnotatorAction.objects.filter(annotator=annotator).select_related("by").order_by("-id"),
        "paused": bool(standing and standing.paused),
        "votes_excluded": bool(standing and standing.votes_excluded),
        "filter_query": "",
    }
    if not filters.is_valid():
        return render_page(request, "quality/annotator.html", "annotator", context, status=400)
    report, rows = quality_rows(filters)
    votes = (
        filters.judgements()
        .filter(annotator=annotator)
        .select_related("pair__prompt", "pair__completion_a", "pair__completion_b")
        .order_by("-id")
    )
    page = Paginator(votes, VOTES_PER_PAGE).get_page(request.GET.get("page"))
    context.update(
        row=next((row for row in rows if row.annotator_id == annotator.pk), None),
        report=report,
        page=page,
        votes=[_vote_view(vote) for vote in page.object_list],
        filter_query=filters.query(sort=""),
    )
    return render_page(request, "quality/annotator.html", "annotator", context, status=status)


@require_GET
@staff_required
def annotator_quality(request: AppRequest, username: str) -> HttpResponse:
    return _annotator_page(request, get_object_or_404(User, username=username))


@require_POST
@staff_required
def annotator_act(request: AppRequest, username: str) -> HttpResponse:
    """Pause or resume the annotator, or exclude or include their votes, with a reason; errors change nothing."""
    annotator = get_object_or_404(User, username=username)
    form = AnnotatorActionForm(request.POST)
    if form.is_valid():
        try:
            services.annotator_act(
                annotator=annotator,
                action=form.cleaned_data["action"],
                by=request.user,
                reason=form.cleaned_data["reason"],
            )
        except Invalid as error:
            for field, message in error.errors.items():
                form.add_error(field if field in form.fields else None, message)
        else:
            label = AnnotatorAction.Action(form.cleaned_data["action"]).label
            messages.info(request, f"{annotator.get_username()}: {label.lower()}.")
            url = reverse("quality-annotator", args=[annotator.get_username()])
            return HttpResponseRedirect(f"{url}?{request.GET.urlencode()}" if request.GET else url, status=303)
    return _annotator_page(request, annotator, action_form=form, status=400)
