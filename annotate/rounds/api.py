"""The staff API for training rounds and model versions: list, start, follow, cancel, promote, serve, decide a
canary."""

from typing import Any

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

from annotate.models import ModelVersion, TrainingRound
from annotate.rounds import canary
from annotate.rounds import services as rounds
from annotate.sampling import services as sampling
from annotate.sampling.generation import ModelServerRefused, ModelServerUnavailable, client_from_settings
from annotate.web.staff_api import (
    BAD_FILTERS,
    NOT_STAFF,
    page_of,
    paginated,
    query_of,
    staff_of,
)
from training.config import FieldSpec


class ModelVersionItem(serializers.ModelSerializer[ModelVersion]):
    parent_version = serializers.CharField(source="parent.name", read_only=True, allow_null=True)

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "status", "base_model", "adapter_path", "parent_version", "created_at", "serving_since"]


class ModelVersionFilter(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=ModelVersion.Status.choices, required=False)


@extend_schema(
    parameters=[ModelVersionFilter],
    responses={200: page_of(ModelVersionItem), 400: BAD_FILTERS, 403: NOT_STAFF},
    operation_id="model_versions_list",
    summary="List model versions (imported answers belong to external ones)",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def model_versions_list(request: Request) -> Response:
    query = query_of(request, ModelVersionFilter)
    versions = ModelVersion.objects.select_related("parent").order_by("id")
    if "status" in query:
        versions = versions.filter(status=query["status"])
    return paginated(request, versions, ModelVersionItem)


# --- Training rounds and model versions ------------------------------------------------------------------


def _config_field(spec: FieldSpec) -> serializers.Field[Any, Any, Any, Any]:
    """A serializer field with exactly the spec's bounds (training.config, capped by the model server's LoRA limit)."""
    if spec.choices:
        return serializers.ChoiceField(choices=spec.choices, required=False, help_text=spec.help)
    field_class = serializers.IntegerField if spec.kind is int else serializers.FloatField
    return field_class(required=False, **spec.input_bounds(), help_text=spec.help)


class RoundInput(serializers.Serializer[Any]):
    """Config overrides; anything left out takes the defaults in settings (ROUND_*). Fields and bounds come from
    training.config's field spec, as the Start round form's do."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields: dict[str, serializers.Field[Any, Any, Any, Any]] = {
            spec.name: _config_field(spec) for spec in rounds.round_config_fields()
        }
        fields["gate_mode"] = serializers.ChoiceField(
            choices=TrainingRound.GateMode.choices,
            required=False,
            help_text="offline, human (a canary of head-to-head votes) or both; ROUND_GATE_MODE when left out",
        )
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        errors = rounds.round_config_errors({name: value for name, value in attrs.items() if name != "gate_mode"})
        if errors:
            raise ValidationError(errors)
        return attrs


class RoundOutput(serializers.ModelSerializer[TrainingRound]):
    parent_version = serializers.CharField(source="parent_version.name", read_only=True)
    result_version = serializers.CharField(source="result_version.name", read_only=True, allow_null=True)
    progress_percent = serializers.IntegerField(read_only=True)
    metrics = serializers.ListField(child=serializers.DictField(), read_only=True, help_text="One entry per step.")

    class Meta:
        model = TrainingRound
        fields = [
            "id", "status", "trigger", "parent_version", "result_version", "config", "rules", "votes_read",
            "last_judgement_id", "holdout_fraction", "train_pairs", "heldout_pairs", "progress_percent", "metrics",
            "evaluation", "phase_seconds", "override_reason", "error", "log_tail", "created_at", "started_at",
            "finished_at", "revision", "gate_mode", "canary_started_at", "canary_decision",
            "multi_turn_train_pairs", "multi_turn_heldout_pairs",
        ]  # fmt: skip


class RoundItem(serializers.ModelSerializer[TrainingRound]):
    """A round in the list: what the rounds page shows; its metrics, evaluation and log are on the round itself."""

    parent_version = serializers.CharField(source="parent_version.name", read_only=True)
    result_version = serializers.CharField(source="result_version.name", read_only=True, allow_null=True)
    started_by = serializers.CharField(source="started_by.username", read_only=True, allow_null=True)
    progress_percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = TrainingRound
        fields = [
            "id", "status", "trigger", "gate_mode", "parent_version", "result_version", "started_by", "votes_read",
            "train_pairs", "heldout_pairs", "progress_percent", "created_at", "started_at", "finished_at", "revision",
        ]  # fmt: skip


class RoundFilter(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=TrainingRound.Status.choices, required=False)
    trigger = serializers.ChoiceField(choices=TrainingRound.Trigger.choices, required=False)
    active = serializers.BooleanField(
        required=False, allow_null=True, default=None, help_text="true: the round running now; false: ended ones."
    )


def _rounds_list(request: Request) -> Response:
    query = query_of(request, RoundFilter)
    listed = TrainingRound.objects.select_related("parent_version", "result_version", "started_by").order_by("-id")
    if "status" in query:
        listed = listed.filter(status=query["status"])
    if "trigger" in query:
        listed = listed.filter(trigger=query["trigger"])
    if "active" in query:
        listed = listed.filter(active=True) if query["active"] else listed.filter(active__isnull=True)
    return paginated(request, listed, RoundItem)


def _rounds_create(request: Request) -> Response:
    data = RoundInput(data=request.data)
    data.is_valid(raise_exception=True)
    overrides = dict(data.validated_data)
    gate_mode = overrides.pop("gate_mode", None)
    training_round = rounds.round_start(
        trigger=TrainingRound.Trigger.API, started_by=staff_of(request), overrides=overrides, gate_mode=gate_mode
    )
    return Response(RoundOutput(training_round).data, status=status.HTTP_201_CREATED)


@extend_schema(
    methods=["GET"],
    parameters=[RoundFilter],
    responses={200: page_of(RoundItem), 400: BAD_FILTERS, 403: NOT_STAFF},
    operation_id="rounds_list",
    summary="List training rounds, newest first",
)
@extend_schema(
    methods=["POST"],
    request=RoundInput,
    responses={201: RoundOutput, 400: OpenApiResponse(description="Invalid config fields, named in `errors`."),
               409: OpenApiResponse(description="A round is running, or there are too few votes (`detail`).")},
    summary="Start a training round",
)  # fmt: skip
@api_view(["GET", "POST"])
@permission_classes([IsAdminUser])
def rounds_collection(request: Request) -> Response:
    return _rounds_list(request) if request.method == "GET" else _rounds_create(request)


@extend_schema(responses={200: RoundOutput}, summary="A training round, with its live metrics and evaluation")
@api_view(["GET"])
@permission_classes([IsAdminUser])
def rounds_detail(request: Request, round_id: int) -> Response:
    return Response(RoundOutput(get_object_or_404(TrainingRound, pk=round_id)).data)


@extend_schema(request=None, responses={202: RoundOutput, 409: OpenApiResponse(description="Not running.")},
               summary="Cancel a running round")  # fmt: skip
@api_view(["POST"])
@permission_classes([IsAdminUser])
def rounds_cancel(request: Request, round_id: int) -> Response:
    training_round = get_object_or_404(TrainingRound, pk=round_id)
    rounds.round_cancel(training_round=training_round)
    training_round.refresh_from_db()
    return Response(RoundOutput(training_round).data, status=status.HTTP_202_ACCEPTED)


class PromoteInput(serializers.Serializer[Any]):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


@extend_schema(
    request=PromoteInput,
    responses={202: RoundOutput, 409: OpenApiResponse(description="Nothing to promote, or a reason is missing.")},
    summary="Deploy a round the eval gate rejected (with a reason), or retry a deploy",
)
@api_view(["POST"])
@permission_classes([IsAdminUser])
def rounds_promote(request: Request, round_id: int) -> Response:
    training_round = get_object_or_404(TrainingRound, pk=round_id)
    data = PromoteInput(data=request.data)
    data.is_valid(raise_exception=True)
    rounds.round_promote(training_round=training_round, by=staff_of(request), reason=data.validated_data["reason"])
    return Response(RoundOutput(training_round).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(
    request=None,
    responses={200: ModelVersionItem, 409: OpenApiResponse(description="It cannot serve (rejected or imported)."),
               503: OpenApiResponse(description="The model server could not load it; nothing changed.")},
    summary="Make a model version serve new pairs (roll back or forward)",
)  # fmt: skip
@api_view(["POST"])
@permission_classes([IsAdminUser])
def model_versions_serve(request: Request, version_id: int) -> Response:
    version = get_object_or_404(ModelVersion, pk=version_id)
    try:
        with client_from_settings() as client:
            version.serve(client)
    except ModelServerUnavailable as error:
        return Response({"detail": str(error), "code": "unavailable"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
    except ModelServerRefused as error:
        return Response({"detail": str(error), "code": "conflict"}, status=status.HTTP_409_CONFLICT)
    sampling.pairs_refill_request(throttle=False)  # pairs from the version now serving, as the rounds page asks
    return Response(ModelVersionItem(version).data)


class CanaryDecisionInput(serializers.Serializer[Any]):
    decision = serializers.ChoiceField(choices=[canary.PROMOTE, canary.REJECT])
    reason = serializers.CharField(max_length=2000, help_text="Why decide before the votes do (required).")


@extend_schema(
    request=CanaryDecisionInput,
    responses={
        202: RoundOutput,
        400: OpenApiResponse(description="No reason, or an unknown decision."),
        409: OpenApiResponse(description="The round is not a canary (any more)."),
    },
    summary="Decide a round's canary early: promote (it deploys) or reject (its adapter is unloaded)",
)
@api_view(["POST"])
@permission_classes([IsAdminUser])
def rounds_canary_decide(request: Request, round_id: int) -> Response:
    training_round = get_object_or_404(TrainingRound, pk=round_id)
    data = CanaryDecisionInput(data=request.data)
    data.is_valid(raise_exception=True)
    canary.canary_decide_early(
        training_round=training_round,
        by=staff_of(request),
        decision=data.validated_data["decision"],
        reason=data.validated_data["reason"],
    )
    training_round.refresh_from_db()
    return Response(RoundOutput(training_round).data, status=status.HTTP_202_ACCEPTED)
