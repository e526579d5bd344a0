"""The staff API for campaigns: who annotates which prompts, how many votes a pair needs, gold and repeats."""

from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError as ModelValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    OpenApiResponse,
    extend_schema,
)
from rest_framework import serializers, status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.models import MAX_ANSWERS_PER_PAIR, MIN_ANSWERS_PER_PAIR, Campaign, ModelVersion
from annotate.sampling.generation import SAMPLING_SPEC_OF_FIELD, SYSTEM_PROMPT_MAX_CHARACTERS, sampling_field_specs
from annotate.web.staff_api import (
    NOT_STAFF,
    page_of,
    paginated,
)

# --- Campaigns, gold pairs, decisions about annotators --------------------------------------------------------


class CampaignItem(serializers.ModelSerializer[Campaign]):
    groups = serializers.SlugRelatedField(
        many=True, slug_field="name", queryset=Group.objects.all(), required=False, help_text="Empty: everyone."
    )
    votes_per_pair = serializers.IntegerField(min_value=1, max_value=50, default=1)
    gold_rate = serializers.FloatField(min_value=0.0, max_value=1.0, default=0.0)
    repeat_rate = serializers.FloatField(min_value=0.0, max_value=1.0, default=0.0)
    answers_per_pair = serializers.IntegerField(
        min_value=MIN_ANSWERS_PER_PAIR,
        max_value=MAX_ANSWERS_PER_PAIR,
        default=MIN_ANSWERS_PER_PAIR,
        help_text="Answers in each new pair: 2 are compared, 3 or 4 are ranked.",
    )
    system_prompt = serializers.CharField(
        required=False, allow_blank=True, max_length=SYSTEM_PROMPT_MAX_CHARACTERS, help_text="Sent before each prompt."
    )
    opponent_version = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.filter(status__in=[ModelVersion.Status.SERVING, ModelVersion.Status.RETIRED]),
        required=False,
        allow_null=True,
        help_text="With sides 'version': the id of the earlier version that makes the second answer.",
    )

    class Meta:
        model = Campaign
        fields = [
            "id", "name", "title", "guidelines", "votes_per_pair", "gold_rate", "repeat_rate", "quota_per_annotator",
            "groups", "is_active", "created_at", "system_prompt", "temperature", "top_p", "max_tokens", "sides",
            "opponent_version", "second_temperature", "second_top_p", "answers_per_pair", "edits_allowed",
            "continuation_allowed",
        ]  # fmt: skip

    def get_fields(self) -> dict[str, serializers.Field]:  # type: ignore[type-arg]
        fields = super().get_fields()
        # Bounded by the one spec (annotate.sampling.generation.sampling_field_specs), read per request: max_tokens'
        # cap is a setting.
        for name, spec_name in SAMPLING_SPEC_OF_FIELD.items():
            spec = sampling_field_specs()[spec_name]
            field_class = serializers.IntegerField if spec.kind is int else serializers.FloatField
            fields[name] = field_class(required=False, allow_null=True, help_text=f"{spec.help}; null: the default",
                                       **spec.input_bounds())  # fmt: skip
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        gold = attrs.get("gold_rate", getattr(self.instance, "gold_rate", 0.0))
        repeat = attrs.get("repeat_rate", getattr(self.instance, "repeat_rate", 0.0))
        if gold + repeat > 1:
            raise ValidationError({"repeat_rate": ["gold and repeat rates together must not exceed 1"]})
        # The rules between the sampling fields are the model's (Campaign.clean), checked on the campaign as it
        # would be saved.
        probe = Campaign() if self.instance is None else Campaign.objects.get(pk=self.instance.pk)
        for name, value in attrs.items():
            if name != "groups":
                setattr(probe, name, value)
        try:
            probe.clean()
        except ModelValidationError as error:
            raise ValidationError(error.message_dict) from error
        return attrs


@extend_schema(methods=["GET"], responses={200: page_of(CampaignItem), 403: NOT_STAFF}, operation_id="campaigns_list",
               summary="List campaigns")  # fmt: skip
@extend_schema(
    methods=["POST"],
    request=CampaignItem,
    responses={201: CampaignItem, 400: OpenApiResponse(description="Invalid fields, named in `errors`.")},
    summary="Create a campaign (its name is the prompt set its prompts name)",
)
@api_view(["GET", "POST"])
@permission_classes([IsAdminUser])
def campaigns(request: Request) -> Response:
    if request.method == "GET":
        return paginated(request, Campaign.objects.prefetch_related("groups").order_by("name"), CampaignItem)
    data = CampaignItem(data=request.data)
    data.is_valid(raise_exception=True)
    return Response(CampaignItem(data.save()).data, status=status.HTTP_201_CREATED)


@extend_schema(methods=["GET"], responses={200: CampaignItem, 404: OpenApiResponse(description="No such campaign.")},
               summary="A campaign")  # fmt: skip
@extend_schema(methods=["PATCH"], request=CampaignItem, responses={200: CampaignItem},
               summary="Change a campaign (new pairs take its overlap; older ones keep theirs)")  # fmt: skip
@api_view(["GET", "PATCH"])
@permission_classes([IsAdminUser])
def campaign_detail(request: Request, campaign_id: int) -> Response:
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    if request.method == "GET":
        return Response(CampaignItem(campaign).data)
    data = CampaignItem(campaign, data=request.data, partial=True)
    data.is_valid(raise_exception=True)
    return Response(CampaignItem(data.save()).data)
