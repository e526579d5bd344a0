"""The staff API for vote quality: the report behind the quality page, an annotator's standing, and decisions
about annotators."""

from typing import Any, cast

from django import forms
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
from annotate.models import AnnotatorAction, AnnotatorStanding
from annotate.quality.columns import QUALITY_VALUES, QualityValue
from annotate.quality.filters import QualityFilters
from annotate.quality.selectors import quality_rows
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


class AnnotatorDecisionItem(serializers.ModelSerializer[AnnotatorAction]):
    by = serializers.CharField(source="by.username", read_only=True, allow_null=True)

    class Meta:
        model = AnnotatorAction
        fields = ["id", "action", "reason", "by", "created_at"]


class AnnotatorDetail(serializers.Serializer[Any]):
    annotator = serializers.CharField(source="username")
    paused = serializers.BooleanField()
    votes_excluded = serializers.BooleanField()
    decisions = AnnotatorDecisionItem(many=True, help_text="Staff decisions about them, newest first.")


@extend_schema(
    responses={200: AnnotatorDetail, 404: OpenApiResponse(description="No such user.")},
    summary="An annotator's standing (paused, votes excluded) and the decisions behind it",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def annotators_detail(request: Request, username: str) -> Response:
    annotator = get_object_or_404(User, username=username)
    standing = AnnotatorStanding.objects.filter(annotator=annotator).first()
    decisions = AnnotatorAction.objects.filter(annotator=annotator).select_related("by").order_by("-id")
    body = {"username": annotator.get_username(), "paused": bool(standing and standing.paused),
            "votes_excluded": bool(standing and standing.votes_excluded), "decisions": decisions}  # fmt: skip
    return Response(AnnotatorDetail(body).data)


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
    rankings = serializers.IntegerField(help_text="Rankings among those votes (pairs of 3 or 4 answers).")
    ranking_alpha_ordinal = serializers.FloatField(
        allow_null=True, help_text="Krippendorff's alpha, ordinal, on the pair orders rankings imply (-1, 0, +1)."
    )
    ranking_kendall_tau = serializers.FloatField(
        allow_null=True, help_text="Mean Kendall's tau-b between two annotators' rankings of the same answers."
    )


class QualityFlagItem(serializers.Serializer[Any]):
    code = serializers.CharField(help_text="position_bias, fast, low_competence, gold or inconsistent")
    reason = serializers.CharField()


def _annotator_field(value: QualityValue) -> serializers.Field[Any, Any, Any, Any]:
    help_text = value.help or None
    if value.kind == "annotator":
        return serializers.CharField(help_text=help_text)
    if value.kind == "count":
        return serializers.IntegerField(help_text=help_text)
    if value.kind == "flags":
        return QualityFlagItem(many=True, help_text=help_text)
    if value.kind == "status":
        return serializers.BooleanField(help_text=help_text)
    return serializers.FloatField(allow_null=True, help_text=help_text)


class QualityAnnotatorItem(serializers.Serializer[Any]):
    """One annotator's row: the values of the quality page's table (annotate.quality.columns), one field each."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return {value.name: _annotator_field(value) for value in QUALITY_VALUES}


class QualityKappaItem(serializers.Serializer[Any]):
    annotator = serializers.CharField()
    other = serializers.CharField()
    shared_pairs = serializers.IntegerField()
    kappa = serializers.FloatField(allow_null=True, help_text="Cohen's kappa; null when undefined.")


class QualityOutput(serializers.Serializer[Any]):
    agreement = QualityAgreementItem()
    annotators = QualityAnnotatorItem(many=True, help_text="In the order asked for by `sort`.")
    kappas = QualityKappaItem(many=True)


def _filter_parameter(name: str, field: forms.Field) -> OpenApiParameter:
    """A query parameter from one of the page's filter fields, with its help."""
    if isinstance(field, forms.DateField):
        return OpenApiParameter(name, OpenApiTypes.DATE, description=str(field.help_text))
    if isinstance(field, forms.ModelChoiceField | forms.IntegerField):
        return OpenApiParameter(name, OpenApiTypes.INT, description=str(field.help_text))
    if not isinstance(field, forms.ChoiceField):
        raise TypeError(f"no query parameter type for the {name} filter ({type(field).__name__})")
    choices = [choice for choice, _ in cast(list[tuple[str, str]], field.choices)]
    return OpenApiParameter(name, OpenApiTypes.STR, enum=choices, description=str(field.help_text))


QUALITY_PARAMETERS = [_filter_parameter(name, field) for name, field in QualityFilters.base_fields.items()]


@extend_schema(
    parameters=QUALITY_PARAMETERS,
    responses={200: QualityOutput, 400: BAD_FILTERS, 403: NOT_STAFF},
    summary="Agreement between annotators and each annotator's signals and flags, for a campaign, days or a round",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def quality(request: Request) -> Response:
    filters = QualityFilters(request.query_params)
    if not filters.is_valid():
        raise ValidationError({field: [str(error) for error in errors] for field, errors in filters.errors.items()})
    report, rows = quality_rows(filters.judgements(), sort=filters.cleaned_data["sort"])
    return Response(
        QualityOutput(
            {"agreement": report.agreement, "annotators": [row.values for row in rows], "kappas": report.kappas}
        ).data
    )
