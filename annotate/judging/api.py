"""The staff API for a campaign's AI judge: its settings (the key shown back masked), its verdicts with their lineage,
its measured trust per prompt version with the routing state, and a run on demand."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.errors import Conflict
from annotate.judging import services as judging
from annotate.judging.selectors import judge_of, judge_trust_by_version
from annotate.judging.trust import Trust, routing_refusal
from annotate.models import Campaign, Judge, JudgeVerdict
from annotate.web.staff_api import NOT_STAFF, page_of, paginated

NO_JUDGE = OpenApiResponse(description="No such campaign, or it has no judge yet.")


def _share() -> serializers.FloatField:
    return serializers.FloatField(min_value=0.0, max_value=1.0)


class JudgeSettings(serializers.Serializer[Any]):
    """The one spec of a judge's settings: the page's form and the API both validate through it."""

    url = serializers.CharField(max_length=500, help_text="The API's base URL (…/v1); chat/completions is asked.")
    model = serializers.CharField(max_length=200, allow_blank=True)
    api_key = serializers.CharField(
        max_length=300, required=False, allow_null=True, allow_blank=True,
        help_text="Sent as a bearer token; never shown back in full. Leave out (or null) to keep it; '' removes it.",
    )  # fmt: skip
    prompt_template = serializers.CharField(max_length=20000, required=False, trim_whitespace=False)
    prompt_version = serializers.CharField(max_length=50, required=False)
    enabled = serializers.BooleanField(default=False)
    allow_private = serializers.BooleanField(default=False, help_text="Allow private and loopback addresses.")
    show_to_annotators = serializers.BooleanField(default=False)
    routing_allowed = serializers.BooleanField(default=False, help_text="Let it settle pairs while trust holds.")
    min_confidence = _share()
    min_gold_accuracy = _share()
    min_kappa = serializers.FloatField(min_value=-1.0, max_value=1.0)
    min_evidence = serializers.IntegerField(min_value=1, max_value=100000)
    check_share = _share()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        defaults = Judge()
        for name in ("min_confidence", "min_gold_accuracy", "min_kappa", "min_evidence", "check_share"):
            self.fields[name].default = getattr(defaults, name)
            self.fields[name].required = False


class TrustItem(serializers.Serializer[Any]):
    prompt_version = serializers.CharField()
    verdicts = serializers.IntegerField(help_text="Answered, unsure ones included.")
    failures = serializers.IntegerField()
    flip_rate = serializers.FloatField(allow_null=True, help_text="Share that changed with the order of the sides.")
    compared = serializers.IntegerField(help_text="People-voted pairs (gold aside) it answered.")
    kappa = serializers.FloatField(allow_null=True, help_text="Cohen's kappa with the people's majority.")
    alpha = serializers.FloatField(allow_null=True, help_text="Krippendorff's alpha (nominal) with the majority.")
    alpha_low = serializers.FloatField(allow_null=True, help_text="95% bootstrap interval, low end.")
    alpha_high = serializers.FloatField(allow_null=True)
    agreement = serializers.FloatField(allow_null=True)
    gold = serializers.IntegerField()
    gold_accuracy = serializers.FloatField(allow_null=True)
    checks = serializers.IntegerField(help_text="Pairs it could have settled, sent to people, with a majority.")
    checks_agreement = serializers.FloatField(allow_null=True)
    settled = serializers.IntegerField()
    votes_saved = serializers.IntegerField(help_text="People's votes the pairs it settled would have needed.")
    settled_unchecked = serializers.IntegerField(
        help_text="Pairs it settled alone that no person has voted on (kept settled when routing stops)."
    )


class JudgeItem(serializers.ModelSerializer[Judge]):
    api_key = serializers.CharField(source="api_key_masked", read_only=True, help_text="Masked.")
    routing_refusal = serializers.SerializerMethodField(help_text="Why its trust does not earn routing now.")
    trust = serializers.SerializerMethodField()

    class Meta:
        model = Judge
        fields = [
            "id", "campaign", "url", "model", "api_key", "prompt_template", "prompt_version", "enabled",
            "allow_private", "show_to_annotators", "routing_allowed", "routing_active", "routing_refusal",
            "routing_stopped_at", "routing_stopped_reason", "min_confidence", "min_gold_accuracy", "min_kappa",
            "min_evidence", "check_share", "trust", "created_at", "updated_at",
        ]  # fmt: skip

    def _trusts(self, judge: Judge) -> list[dict[str, Any]]:
        """Measured once per answer: both the trust list and the refusal read it."""
        cached = getattr(self, "_measured", None)
        if cached is None:
            cached = [trust_data(item.prompt_version, item.trust) for item in judge_trust_by_version(judge=judge)]
            self._measured = cached
        return list(cached)

    def get_trust(self, judge: Judge) -> list[dict[str, Any]]:
        return TrustItem(self._trusts(judge), many=True).data  # type: ignore[return-value]

    def get_routing_refusal(self, judge: Judge) -> str | None:
        current = next((t for t in self._trusts(judge) if t["prompt_version"] == judge.prompt_version), None)
        return routing_refusal(current["measured"] if current else Trust(), judging.judge_bars(judge))


def trust_data(prompt_version: str, trust: Trust) -> dict[str, Any]:
    interval = trust.alpha_interval or (None, None)
    return {
        "prompt_version": prompt_version,
        "measured": trust,
        "verdicts": trust.verdicts,
        "failures": trust.failures,
        "flip_rate": trust.flip_rate,
        "compared": trust.compared,
        "kappa": trust.kappa,
        "alpha": trust.alpha,
        "alpha_low": interval[0],
        "alpha_high": interval[1],
        "agreement": trust.agreement,
        "gold": trust.gold,
        "gold_accuracy": trust.gold_accuracy,
        "checks": trust.checks,
        "checks_agreement": trust.checks_agreement,
        "settled": trust.settled,
        "votes_saved": trust.votes_saved,
        "settled_unchecked": trust.settled_unchecked,
    }


class VerdictItem(serializers.ModelSerializer[JudgeVerdict]):
    class Meta:
        model = JudgeVerdict
        fields = [
            "id", "pair", "prompt_version", "endpoint", "model", "status", "choice", "confidence", "consistent",
            "first_choice", "second_choice", "first_reply", "second_reply", "error", "settled", "is_check",
            "created_at", "finished_at",
        ]  # fmt: skip


def app_hosts_of(request: Any) -> list[str]:
    """The host this request reached the app at: a judge may not be asked there."""
    try:
        return [request.get_host()]
    except Exception:  # DisallowedHost: the middleware refused it already; nothing to add
        return []


def _judge(campaign_id: int) -> Judge:
    return get_object_or_404(Judge.objects.select_related("campaign"), campaign_id=campaign_id)


@extend_schema(methods=["GET"], responses={200: JudgeItem, 403: NOT_STAFF, 404: NO_JUDGE}, operation_id="judge_read",
               summary="A campaign's AI judge: settings (key masked), trust per version, routing state")  # fmt: skip
@extend_schema(
    methods=["PUT"],
    request=JudgeSettings,
    responses={
        200: JudgeItem,
        400: OpenApiResponse(description="A URL it may not ask (private, the app itself), a bad template, bounds."),
        403: NOT_STAFF,
        404: OpenApiResponse(description="No such campaign."),
    },
    operation_id="judge_configure",
    summary="Set a campaign's AI judge (made the first time)",
)
@api_view(["GET", "PUT"])
@permission_classes([IsAdminUser])
def judge_detail(request: Request, campaign_id: int) -> Response:
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    if request.method == "PUT":
        data = JudgeSettings(data=request.data)
        data.is_valid(raise_exception=True)
        judge = judging.judge_configure(campaign=campaign, values=data.validated_data, app_hosts=app_hosts_of(request))
        return Response(JudgeItem(judge).data)
    existing = judge_of(campaign)
    if existing is None:
        return Response({"detail": "This campaign has no judge yet."}, status=status.HTTP_404_NOT_FOUND)
    return Response(JudgeItem(existing).data)


@extend_schema(responses={200: page_of(VerdictItem), 403: NOT_STAFF, 404: NO_JUDGE}, operation_id="judge_verdicts_list",
               summary="The judge's verdicts, newest first, with both raw replies and their lineage")  # fmt: skip
@api_view(["GET"])
@permission_classes([IsAdminUser])
def judge_verdicts(request: Request, campaign_id: int) -> Response:
    return paginated(request, _judge(campaign_id).verdicts.order_by("-id"), VerdictItem)


@extend_schema(request=None, responses={202: JudgeItem, 403: NOT_STAFF, 404: NO_JUDGE,
                                        409: OpenApiResponse(description="The judge is off.")},
               operation_id="judge_run",
               summary="Ask the judge about a batch of pairs now (a worker does it)")  # fmt: skip
@api_view(["POST"])
@permission_classes([IsAdminUser])
def judge_run(request: Request, campaign_id: int) -> Response:
    judge = _judge(campaign_id)
    if not judge.enabled:
        raise Conflict("the judge is off: switch it on first")
    judging.judge_run_enqueue(judge=judge)
    return Response(JudgeItem(judge).data, status=status.HTTP_202_ACCEPTED)
