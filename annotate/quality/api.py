"""The staff API for vote quality: the report behind the quality page, and decisions about annotators."""

from typing import Any

from django.contrib.auth.models import User
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.annotation import services
from annotate.models import AnnotatorAction
from annotate.quality import views as quality_views
from annotate.web.staff_api import (
    BAD_FILTERS,
    NOT_STAFF,
    staff_of,
)


class AnnotatorActionInput(serializers.Serializer[Any]):
    action = serializers.ChoiceField(choices=AnnotatorAction.Action.choices)
    reason = serializers.CharField(max_length=2000)


class AnnotatorStandingItem(serializers.Serializer[Any]):
    annotator = serializers.CharField(source="annotator.username")
    paused = serializers.BooleanField()
    votes_excluded = serializers.BooleanField()


@extend_schema(
    request=AnnotatorActionInput,
    responses={200: AnnotatorStandingItem, 404: OpenApiResponse(description="No such user.")},
    summary="Pause or resume an annotator, or exclude or include their votes (recorded with the reason)",
)
@api_view(["POST"])
@permission_classes([IsAdminUser])
def annotators_act(request: Request, username: str) -> Response:
    annotator = get_object_or_404(User, username=username)
    data = AnnotatorActionInput(data=request.data)
    data.is_valid(raise_exception=True)
    standing = services.annotator_act(
        annotator=annotator, action=data.validated_data["action"], by=staff_of(request),
        reason=data.validated_data["reason"],
    )  # fmt: skip
    return Response(AnnotatorStandingItem(standing).data)


# --- Vote quality ----------------------------------------------------------------------------------------------


class QualityAgreementItem(serializers.Serializer[Any]):
    alpha_nominal = serializers.FloatField(
        allow_null=True,
        help_text="Krippendorff's alpha over a/b/tie/both_bad; null (undefined) with fewer than two annotators or "
        "pairable pairs.",
    )
    alpha_ordinal = serializers.FloatField(allow_null=True, help_text="On the signed strength scale -3..+3 (tie 0).")
    annotators = serializers.IntegerField()
    units = serializers.IntegerField(source="items", help_text="Pairs with votes.")
    pairable_units = serializers.IntegerField(source="pairable_items", help_text="Pairs with two annotators or more.")
    votes = serializers.IntegerField(help_text="First votes (repeats left out).")


class QualityFlagItem(serializers.Serializer[Any]):
    code = serializers.CharField(help_text="position_bias, fast, low_competence, gold or inconsistent")
    reason = serializers.CharField()


class QualityAnnotatorItem(serializers.Serializer[Any]):
    username = serializers.CharField()
    votes = serializers.IntegerField()
    left_share = serializers.FloatField(allow_null=True, help_text="Share of decisive votes for the left answer.")
    left_decisive = serializers.IntegerField(help_text="Decisive votes whose screen side is known.")
    position_p_value = serializers.FloatField(allow_null=True, help_text="Two-sided binomial test against 50 %.")
    median_seconds = serializers.FloatField(allow_null=True)
    share_under_floor = serializers.FloatField(allow_null=True, help_text="Share of votes under the speed floor.")
    longer_share = serializers.FloatField(allow_null=True, help_text="Share of decisive votes for the longer answer.")
    longer_decisive = serializers.IntegerField()
    campaign_longer_share = serializers.FloatField(allow_null=True, help_text="The same share over every annotator.")
    tie_rate = serializers.FloatField(allow_null=True)
    both_bad_rate = serializers.FloatField(allow_null=True)
    gold_accuracy = serializers.FloatField(allow_null=True)
    gold_answered = serializers.IntegerField()
    self_consistency = serializers.FloatField(allow_null=True)
    repeats = serializers.IntegerField()
    majority_agreement = serializers.FloatField(allow_null=True, help_text="With the leave-one-out majority.")
    majority_compared = serializers.IntegerField()
    competence = serializers.FloatField(allow_null=True, help_text="MACE: 1 - the probability of guessing.")
    flags = QualityFlagItem(many=True)
    paused = serializers.BooleanField()
    votes_excluded = serializers.BooleanField()


class QualityKappaItem(serializers.Serializer[Any]):
    annotator = serializers.CharField()
    other = serializers.CharField()
    shared_pairs = serializers.IntegerField()
    kappa = serializers.FloatField(allow_null=True, help_text="Cohen's kappa; null when undefined.")


class QualityOutput(serializers.Serializer[Any]):
    agreement = QualityAgreementItem()
    annotators = QualityAnnotatorItem(many=True, help_text="In the order asked for by `sort`.")
    kappas = QualityKappaItem(many=True)


QUALITY_PARAMETERS = [
    OpenApiParameter("campaign", OpenApiTypes.INT, description="A campaign's id."),
    OpenApiParameter("date_from", OpenApiTypes.DATE, description="Votes cast on or after this day (UTC)."),
    OpenApiParameter("date_to", OpenApiTypes.DATE, description="Votes cast on or before this day (UTC)."),
    OpenApiParameter("round", OpenApiTypes.INT, description="A training round's id: only the votes it read."),
    OpenApiParameter(
        "sort",
        OpenApiTypes.STR,
        enum=[value for value, _ in quality_views.SORT_CHOICES],
        description="A column of the annotator table; a leading '-' sorts high first.",
    ),
]


@extend_schema(
    parameters=QUALITY_PARAMETERS,
    responses={200: QualityOutput, 400: BAD_FILTERS, 403: NOT_STAFF},
    summary="Agreement between annotators and each annotator's signals and flags, for a campaign, days or a round",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def quality(request: Request) -> Response:
    filters = quality_views.QualityFilters(request.query_params)
    if not filters.is_valid():
        raise ValidationError({field: [str(error) for error in errors] for field, errors in filters.errors.items()})
    report, rows = quality_views.quality_rows(filters)
    return Response(
        QualityOutput(
            {
                "agreement": report.agreement,
                "annotators": [
                    {**vars(row), "flags": [{"code": flag.code, "reason": flag.reason} for flag in row.flags]}
                    for row in rows
                ],
                "kappas": report.kappas,
            }
        ).data
    )
