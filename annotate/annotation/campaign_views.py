"""Staff pages for campaigns (guidelines, overlap, gold and repeat rates, who may work on them) and single pairs
(their answers, votes and gold answer)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate.annotation import services
from annotate.errors import Invalid
from annotate.models import Campaign, Judgement, ModelVersion, Pair
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Built here, not at import: max_tokens' cap is a setting.
        for name, spec_name in SAMPLING_SPEC_OF_FIELD.items():
            self.fields[name] = _sampling_field(spec_name, label=name.replace("_", " ").capitalize())

    class Meta:
        model = Campaign
        fields = [
            "name", "title", "guidelines", "votes_per_pair", "gold_rate", "repeat_rate", "groups", "is_active",
            "system_prompt", "temperature", "top_p", "max_tokens", "sides", "opponent_version", "second_temperature",
            "second_top_p",
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
        votes = cleaned.get("votes_per_pair")
        if votes is not None and votes < 1:
            self.add_error("votes_per_pair", "must be at least 1")
        return cleaned


@require_http_methods(["GET", "POST"])
@staff_required
def campaigns(request: AppRequest) -> HttpResponse:
    form = CampaignForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        campaign = form.save()
        messages.info(request, f"Campaign {campaign.name} created.")
        return HttpResponseRedirect(reverse("campaigns"), status=303)
    context = {"campaigns": Campaign.objects.prefetch_related("groups"), "form": form}
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
    context = {"campaign": campaign, "form": form}
    return render_page(request, "campaigns/edit.html", "campaign", context, status=400 if form.errors else 200)


class GoldForm(forms.Form):
    expected = forms.ChoiceField(
        choices=[("", "not gold"), *Judgement.Choice.choices], required=False, label="Expected answer"
    )


@require_GET
@staff_required
def pair_detail(request: AppRequest, pair_id: int) -> HttpResponse:
    pair = get_object_or_404(
        Pair.objects.select_related("prompt", "completion_a__model_version", "completion_b__model_version", "campaign"),
        pk=pair_id,
    )
    votes = pair.judgements.select_related("annotator").order_by("id")
    context = {"pair": pair, "votes": votes, "gold_form": GoldForm(initial={"expected": pair.gold_choice})}
    return render_page(request, "campaigns/pair.html", "pair", context)


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
