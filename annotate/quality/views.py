"""Staff pages for vote quality: agreement and the annotator table (/quality/), and one annotator's votes with the
decisions about them (/quality/annotators/<username>/).

The table's columns are annotate.quality.columns's, the filters annotate.quality.filters's and the reads
annotate.quality.selectors's, shared with GET /api/quality/ (annotate.quality.api).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from annotate.annotation import services
from annotate.errors import Invalid
from annotate.judging.views import judges_for_quality
from annotate.models import AnnotatorAction, AnnotatorStanding, Judgement
from annotate.quality.agreement import p_value_text
from annotate.quality.columns import Cell, QualityColumn, QualityRow, columns_shown, flag_word, table_cells
from annotate.quality.filters import QualityFilters
from annotate.quality.selectors import quality_rows
from annotate.web.pages import AppRequest, render_page, staff_required

VOTES_PER_PAGE = 50


@dataclass(frozen=True)
class Heading:
    label: str
    url: str
    direction: str  # "ascending", "descending" or "" when the table is not sorted by this column


def _headings(request: AppRequest, filters: QualityFilters, columns: list[QualityColumn]) -> list[Heading]:
    current = filters.cleaned_data["sort"]
    headings = []
    for column in columns:
        key = column.name
        direction = "ascending" if current == key else "descending" if current == f"-{key}" else ""
        # A click on the sorted column turns it round; on another, it starts the column's own way.
        new = f"-{key}" if direction == "ascending" or (not direction and column.starts_descending) else key
        headings.append(Heading(column.label, f"{request.path}?{filters.query(sort=new)}", direction))
    return headings


@dataclass(frozen=True)
class TableRow:
    username: str
    cells: list[Cell]
    css_class: str  # "flagged" when a signal asks for a look, "held" when staff paused them or excluded their votes


def _table(rows: list[QualityRow], filter_query: str, columns: list[QualityColumn]) -> list[TableRow]:
    """The annotator table's rows as the page writes them; each name links to its drill-down with the same filters."""
    table = []
    for row in rows:
        url = reverse("quality-annotator", args=[row.username])
        cells = table_cells(row, annotator_url=f"{url}?{filter_query}" if filter_query else url, columns=columns)
        held = row.paused or row.votes_excluded
        table.append(TableRow(row.username, cells, "held" if held else "flagged" if row.signals.flags else ""))
    return table


@require_GET
@staff_required
def quality(request: AppRequest) -> HttpResponse:
    filters = QualityFilters(request.GET)
    context: dict[str, Any] = {"filters": filters, "report": None}
    if not filters.is_valid():
        return render_page(request, "quality/quality.html", "quality", context, status=400)
    report, rows = quality_rows(filters.judgements(), sort=filters.cleaned_data["sort"])
    filter_query = filters.query(sort="")
    columns = columns_shown(rows)
    context.update(
        report=report,
        rows=_table(rows, filter_query, columns),
        headings=_headings(request, filters, columns),
        filter_query=filter_query,
    )
    context["judges"] = judges_for_quality()
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
    report, rows = quality_rows(filters.judgements(), sort=filters.cleaned_data["sort"])
    votes = (
        filters.judgements()
        .filter(annotator=annotator)
        .select_related("pair__prompt", "pair__completion_a", "pair__completion_b")
        .order_by("-id")
    )
    page = Paginator(votes, VOTES_PER_PAGE).get_page(request.GET.get("page"))
    row = next((row.values for row in rows if row.annotator_id == annotator.pk), None)
    context.update(
        row=row,
        flags=[(flag_word(flag.code), flag.reason) for flag in row["flags"]] if row else [],
        position_p=p_value_text(row["position_p_value"]) if row and row["position_p_value"] is not None else "",
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
