"""Staff pages for a campaign's AI judge: its settings (a plain POST form, the key never shown back in full), its
measured trust per prompt version, the routing state with why it is off or why it stopped, and its last verdicts;
and the judges' part of the quality page."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from annotate.errors import Invalid
from annotate.judging import services as judging
from annotate.judging.api import JudgeSettings, app_hosts_of, trust_data
from annotate.judging.selectors import judge_hint_effect, judge_of, judge_trust_by_version
from annotate.judging.trust import Trust, routing_refusal
from annotate.models import Campaign, Judge
from annotate.quality.judge_rule import judge_rule_described
from annotate.web.pages import AppRequest, staff_required

VERDICTS_SHOWN = 30


def judge_summary(judge: Judge) -> dict[str, Any]:
    """What a page shows of a judge: trust per prompt version (current first) and why routing is off, if it is."""
    trusts = [trust_data(item.prompt_version, item.trust) for item in judge_trust_by_version(judge=judge)]
    current = next((t["measured"] for t in trusts if t["prompt_version"] == judge.prompt_version), Trust())
    return {
        "judge": judge,
        "trusts": trusts,
        "current": current,
        "refusal": routing_refusal(current, judging.judge_bars(judge)),
        "hint": judge_hint_effect(judge=judge),
        # Over every prompt version: a pair is settled once, by whichever version answered it.
        "unchecked": sum(t["measured"].settled_unchecked for t in trusts),
        "round_judge_rule": judge_rule_described(settings.ROUND_JUDGE, settings.ROUND_JUDGE_WEIGHT),
    }


def _page(
    request: AppRequest, campaign: Campaign, *, errors: dict[str, Any] | None = None, values: Any = None
) -> HttpResponse:
    judge = judge_of(campaign)
    context: dict[str, Any] = {
        "campaign": campaign,
        "values": values if values is not None else (judge or Judge()),
        "errors": errors or {},
        "summary": judge_summary(judge) if judge else None,
        "verdicts": judge.verdicts.select_related("pair").order_by("-id")[:VERDICTS_SHOWN] if judge else [],
    }
    return render(request, "judging/judge.html", context, status=400 if errors else 200)


@require_http_methods(["GET", "POST"])
@staff_required
def judge_page(request: AppRequest, campaign_id: int) -> HttpResponse:
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    if request.method == "GET":
        return _page(request, campaign)
    data = JudgeSettings(data=request.POST)
    if not data.is_valid():
        errors = {name: " ".join(str(message) for message in messages) for name, messages in data.errors.items()}
        return _page(request, campaign, errors=errors, values=request.POST)
    values = dict(data.validated_data)
    if not values.get("api_key") and not request.POST.get("remove_key"):
        values["api_key"] = None  # an empty key field keeps the key (it is never filled in by the page)
    try:
        judging.judge_configure(campaign=campaign, values=values, app_hosts=app_hosts_of(request))
    except Invalid as invalid:
        return _page(request, campaign, errors=invalid.errors, values=request.POST)
    return HttpResponseRedirect(reverse("campaign-judge", args=[campaign.pk]), status=303)


@require_POST
@staff_required
def judge_run(request: AppRequest, campaign_id: int) -> HttpResponse:
    judge = get_object_or_404(Judge, campaign_id=campaign_id)
    if not judge.enabled:
        return _page(request, judge.campaign, errors={"enabled": "The judge is off: switch it on first."})
    judging.judge_run_enqueue(judge=judge)
    return HttpResponseRedirect(reverse("campaign-judge", args=[campaign_id]), status=303)


def judges_for_quality() -> list[dict[str, Any]]:
    """The quality page's judges: every campaign's judge, measured as one more annotator."""
    return [judge_summary(judge) for judge in Judge.objects.select_related("campaign").order_by("campaign__name")]
