"""Staff pages for campaigns (guidelines, overlap, gold and repeat rates, who may work on them) and single pairs
(their answers, votes and gold answer)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.db.models import Count, F, Max, Q
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate.annotation import edits, services
from annotate.errors import Invalid
from annotate.models import (
    MAX_ANSWERS_PER_PAIR,
    MIN_ANSWERS_PER_PAIR,
    Assignment,
    Campaign,
    Judgement,
    ModelVersion,
    Pair,
)
from annotate.quality.columns import DEFAULT_SORT
from annotate.quality.selectors import quality_judgements, quality_rows
from annotate.sampling.generation import SAMPLING_SPEC_OF_FIELD, SYSTEM_PROMPT_MAX_CHARACTERS, sampling_field_specs
from annotate.web.pages import AppRequest, render_page, staff_required


def _sampling_field(spec_name: str, label: str = "") -> forms.Field:
    """A sampling setting's field, bounded by its spec (annotate.sampling.generation.sampling_field_specs)."""
    spec = sampling_field_specs()[spec_name]
    field_class = forms.IntegerField if spec.kind is int else forms.FloatField
    help_text = f"{spec.help.capitalize()}; empty: the deployment's default."
    return field_class(required=False, label=label or None, help_text=help_text, **spec.input_bounds())


class CampaignForm(forms.ModelForm):  # type: ignore[type-arg]
    system_prompt = forms.CharField(
        required=False,
        max_length=SYSTEM_PROMPT_MAX_CHARACTERS,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Sent as the system message before each prompt (a prompt's own system message wins).",
    )
    # Not required, so a form (or a script) that predates it still makes campaigns that sample as before.
    sides = forms.TypedChoiceField(
        choices=Campaign.Sides.choices,
        required=False,
        empty_value=Campaign.Sides.SELF,
        help_text="What the two answers of a pair are.",
    )
    opponent_version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.filter(status__in=[ModelVersion.Status.SERVING, ModelVersion.Status.RETIRED]),
        required=False,
        help_text="With sides 'version': the earlier version that makes the second answer.",
    )
    answers_per_pair = forms.TypedChoiceField(
        choices=[(count, str(count)) for count in range(MIN_ANSWERS_PER_PAIR, MAX_ANSWERS_PER_PAIR + 1)],
        coerce=int,
        required=False,
        empty_value=None,
        help_text="Answers in each new pair: 2 are compared, 3 or 4 are ranked.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Built here, not at import: max_tokens' cap is a setting.
        for name, spec_name in SAMPLING_SPEC_OF_FIELD.items():
            self.fields[name] = _sampling_field(spec_name, label=name.replace("_", " ").capitalize())

    class Meta:
        model = Campaign
        fields = [
            "name", "title", "guidelines", "votes_per_pair", "gold_rate", "repeat_rate", "quota_per_annotator",
            "groups", "is_active", "system_prompt", "temperature", "top_p", "max_tokens", "sides", "opponent_version",
            "second_temperature", "second_top_p", "answers_per_pair", "edits_allowed",
            "continuation_allowed",
        ]  # fmt: skip
        widgets = {"guidelines": forms.Textarea(attrs={"rows": 6})}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name in ("gold_rate", "repeat_rate"):
            value = cleaned.get(name)
            if value is not None and not 0 <= value <= 1:
                self.add_error(name, "must be between 0 and 1")
        if (cleaned.get("gold_rate") or 0) + (cleaned.get("repeat_rate") or 0) > 1:
            self.add_error("repeat_rate", "gold and repeat rates together must not exceed 1")
        if cleaned.get("answers_per_pair") is None:
            cleaned["answers_per_pair"] = MIN_ANSWERS_PER_PAIR  # a form that predates it compares two, as before
        votes = cleaned.get("votes_per_pair")
        if votes is not None and votes < 1:
            self.add_error("votes_per_pair", "must be at least 1")
        return cleaned


# An annotator counts as active on a campaign with a vote on it this recently, or a pair of it on their screen now.
ACTIVE_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class CampaignProgress:
    """Where a campaign's pairs stand (gold pairs aside: they are served at the gold rate, never filled up)."""

    pairs: int
    complete: int  # every vote its overlap asks for
    open: int  # a place free for the next annotator
    leased: int  # live leases: pairs on someone's screen now
    votes: int
    active_annotators: int

    @property
    def percent(self) -> int:
        return 100 * self.complete // self.pairs if self.pairs else 0


def _live_leases(now: Any) -> Q:
    return Q(status=Assignment.Status.LEASED, expires_at__gt=now)


def _campaigns_progress(campaigns: list[Campaign]) -> dict[int, CampaignProgress]:
    now = timezone.now()
    pairs = (
        Pair.objects.filter(campaign__in=campaigns, gold_choice="")
        .values("campaign_id")
        .annotate(
            pairs=Count("id"),
            complete=Count("id", filter=Q(judgement_count__gte=F("judgements_required"))),
            open=Count("id", filter=Q(judgement_count__lt=F("judgements_required") - F("lease_count"))),
        )
    )
    votes = dict(
        Judgement.objects.filter(pair__campaign__in=campaigns)
        .values("pair__campaign_id")
        .annotate(count=Count("id"))
        .values_list("pair__campaign_id", "count")
    )
    leased = dict(
        Assignment.objects.filter(_live_leases(now), pair__campaign__in=campaigns)
        .values("pair__campaign_id")
        .annotate(count=Count("id"))
        .values_list("pair__campaign_id", "count")
    )
    active: dict[int, set[int]] = {}
    recent = Judgement.objects.filter(pair__campaign__in=campaigns, created_at__gte=now - ACTIVE_WINDOW)
    for campaign_id, annotator_id in recent.values_list("pair__campaign_id", "annotator_id").distinct():
        if annotator_id is not None:  # imported votes belong to no annotator
            active.setdefault(campaign_id, set()).add(annotator_id)
    screens = Assignment.objects.filter(_live_leases(now), pair__campaign__in=campaigns)
    for campaign_id, annotator_id in screens.values_list("pair__campaign_id", "annotator_id").distinct():
        active.setdefault(campaign_id, set()).add(annotator_id)
    counted: dict[int, dict[str, Any]] = {row["campaign_id"]: {**row} for row in pairs}
    return {
        campaign.pk: CampaignProgress(
            pairs=counted.get(campaign.pk, {}).get("pairs", 0),
            complete=counted.get(campaign.pk, {}).get("complete", 0),
            open=counted.get(campaign.pk, {}).get("open", 0),
            leased=leased.get(campaign.pk, 0),
            votes=votes.get(campaign.pk, 0),
            active_annotators=len(active.get(campaign.pk, ())),
        )
        for campaign in campaigns
    }


@dataclass(frozen=True)
class AnnotatorProgress:
    username: str
    votes: int
    skipped: int
    leased: int  # pairs of the campaign on their screen now
    last_vote: Any


def _annotators_progress(campaign: Campaign) -> list[AnnotatorProgress]:
    """Each annotator who was dealt a pair of the campaign: votes, skips, live leases and their last vote."""
    now = timezone.now()
    rows = (
        Assignment.objects.filter(pair__campaign=campaign)
        .values("annotator__username")
        .annotate(
            votes=Count("id", filter=Q(status=Assignment.Status.JUDGED)),
            skipped=Count("id", filter=Q(status=Assignment.Status.SKIPPED)),
            leased=Count("id", filter=_live_leases(now)),
            last_vote=Max("finished_at", filter=Q(status=Assignment.Status.JUDGED)),
        )
        .order_by("-votes", "annotator__username")
    )
    return [
        AnnotatorProgress(row["annotator__username"], row["votes"], row["skipped"], row["leased"], row["last_vote"])
        for row in rows
    ]


def _campaign_agreement(campaign: Campaign) -> float | None:
    """Krippendorff's alpha (nominal) over the campaign's votes, as the quality page computes it."""
    report, _ = quality_rows(quality_judgements(campaign=campaign), sort=DEFAULT_SORT)
    return report.agreement.alpha_nominal


@require_http_methods(["GET", "POST"])
@staff_required
def campaigns(request: AppRequest) -> HttpResponse:
    form = CampaignForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        campaign = form.save()
        messages.info(request, f"Campaign {campaign.name} created.")
        return HttpResponseRedirect(reverse("campaigns"), status=303)
    listed = list(Campaign.objects.prefetch_related("groups").order_by("-is_active", "name"))
    progress = _campaigns_progress(listed)
    context = {
        "campaigns": [(campaign, progress[campaign.pk]) for campaign in listed],
        "form": form,
        "active_hours": int(ACTIVE_WINDOW.total_seconds() // 3600),
    }
    return render_page(request, "campaigns/list.html", "campaigns", context, status=400 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@staff_required
def campaign_edit(request: AppRequest, campaign_id: int) -> HttpResponse:
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    form = CampaignForm(request.POST or None, instance=campaign)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.info(
            request, f"Campaign {campaign.name} saved. New pairs take its overlap and sampling; older ones keep theirs."
        )
        return HttpResponseRedirect(reverse("campaigns"), status=303)
    context = {
        "campaign": campaign,
        "form": form,
        "progress": _campaigns_progress([campaign])[campaign.pk],
        "annotators": _annotators_progress(campaign),
        "agreement": _campaign_agreement(campaign),
        "active_hours": int(ACTIVE_WINDOW.total_seconds() // 3600),
    }
    return render_page(request, "campaigns/edit.html", "campaign", context, status=400 if form.errors else 200)


class GoldForm(forms.Form):
    expected = forms.ChoiceField(
        choices=[("", "not gold"), *Judgement.Choice.choices], required=False, label="Expected answer"
    )


@require_GET
@staff_required
def pair_detail(request: AppRequest, pair_id: int) -> HttpResponse:
    return pair_page(request, pair_id)


def pair_page(request: AppRequest, pair_id: int, status: int = 200, **extra: Any) -> HttpResponse:
    """The pair's staff page; `extra` is what a refused change on it says (the answers written with its votes have
    their own review, annotate/annotation/edit_views.py)."""
    pair = get_object_or_404(
        Pair.objects.select_related("prompt", "completion_a__model_version", "completion_b__model_version", "campaign"),
        pk=pair_id,
    )
    votes = pair.judgements.select_related("annotator").order_by("id")
    context = {"pair": pair, "votes": votes, "gold_form": GoldForm(initial={"expected": pair.gold_choice})}
    context["human_answers"] = edits.human_answers_of_pair(pair)
    return render_page(request, "campaigns/pair.html", "pair", {**context, **extra}, status=status)


@require_POST
@staff_required
def pair_gold(request: AppRequest, pair_id: int) -> HttpResponse:
    pair = get_object_or_404(Pair, pk=pair_id)
    form = GoldForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a, b, tie, both_bad or not gold.")
    else:
        try:
            services.pair_mark_gold(pair=pair, expected=form.cleaned_data["expected"])
            messages.info(request, f"Pair {pair.pk} is {'gold' if pair.is_gold else 'no longer gold'}.")
        except Invalid as error:
            messages.error(request, str(error))
    return HttpResponseRedirect(reverse("pair-detail", args=[pair_id]))
