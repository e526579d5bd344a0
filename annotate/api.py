"""The annotation API: the same services as the HTML views.

Outside clients rely on these shapes: extend them, never rename.
"""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotate import rounds, services
from annotate.generation import ModelServerUnavailable, client_from_settings
from annotate.models import ModelVersion, TrainingRound
from training.config import SUPPORTED_LOSS_TYPES


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's errors, always as JSON with a `detail` or the fields named; annotation errors as 409 / 400."""
    if isinstance(exc, services.InvalidJudgement):
        return Response({"errors": exc.errors}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, services.LeaseConflict):
        return Response({"detail": str(exc), "code": exc.code}, status=status.HTTP_409_CONFLICT)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, ValidationError):
        response.data = {"errors": response.data}
    return response


def _annotator(request: Request) -> User:
    return cast(User, request.user)  # IsAuthenticated, the default permission, let only users through


class AnswerSerializer(serializers.Serializer[Any]):
    text = serializers.CharField()


class NextPairOutput(serializers.Serializer[Any]):
    pair = serializers.IntegerField(source="pair_id")
    prompt = serializers.ListField(child=serializers.DictField(), source="pair.prompt.messages")
    left = AnswerSerializer()
    right = AnswerSerializer()
    lease_expires = serializers.DateTimeField(source="expires_at")


@extend_schema(
    responses={200: NextPairOutput, 204: OpenApiResponse(description="No pair is ready; try again shortly.")},
    summary="Lease the next pair to compare",
)
@api_view(["GET"])
def pairs_next(request: Request) -> Response:
    assignment = services.assignment_lease_next(annotator=_annotator(request))
    if assignment is None:
        services.pairs_refill_request()
        return Response(status=status.HTTP_204_NO_CONTENT)
    return Response(NextPairOutput(assignment).data)


class JudgementInput(serializers.Serializer[Any]):
    pair = serializers.IntegerField(min_value=1)
    choice = serializers.ChoiceField(choices=services.SCREEN_CHOICES)
    strength = serializers.IntegerField(required=False, allow_null=True, default=None)
    rationale = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=True)
    idempotency_key = serializers.UUIDField()


class JudgementOutput(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    pair = serializers.IntegerField(source="pair_id")
    choice = serializers.CharField(source="choice_on_screen", help_text="As shown: left, right, tie or both_bad.")
    choice_relative_to_pair = serializers.CharField(source="choice", help_text="a, b, tie or both_bad.")
    strength = serializers.IntegerField(allow_null=True)
    rationale = serializers.CharField()
    idempotency_key = serializers.UUIDField()
    time_spent_ms = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()


@extend_schema(
    request=JudgementInput,
    responses={
        201: JudgementOutput,
        200: OpenApiResponse(JudgementOutput, description="This idempotency key was already recorded."),
        400: OpenApiResponse(description="Invalid fields, named in `errors`."),
        409: OpenApiResponse(description="The pair is not leased to you (reason in `detail`)."),
    },
    summary="Record a vote on a leased pair",
)
@api_view(["POST"])
def judgements_create(request: Request) -> Response:
    data = JudgementInput(data=request.data)
    data.is_valid(raise_exception=True)
    recorded = services.judgement_record(
        annotator=_annotator(request),
        pair_id=data.validated_data["pair"],
        choice=data.validated_data["choice"],
        strength=data.validated_data["strength"],
        rationale=data.validated_data["rationale"],
        idempotency_key=data.validated_data["idempotency_key"],
    )
    return Response(
        JudgementOutput(recorded.judgement).data,
        status=status.HTTP_201_CREATED if recorded.created else status.HTTP_200_OK,
    )


class SkipInput(serializers.Serializer[Any]):
    pair = serializers.IntegerField(min_value=1)


@extend_schema(
    request=SkipInput,
    responses={204: None, 409: OpenApiResponse(description="The pair is not leased to you.")},
    summary="Skip a leased pair (it is not shown to you again)",
)
@api_view(["POST"])
def pairs_skip(request: Request) -> Response:
    data = SkipInput(data=request.data)
    data.is_valid(raise_exception=True)
    services.assignment_skip(annotator=_annotator(request), pair_id=data.validated_data["pair"])
    return Response(status=status.HTTP_204_NO_CONTENT)


# --- Training rounds (staff) -------------------------------------------------------------------------------------


class RoundInput(serializers.Serializer[Any]):
    """Config overrides; anything left out takes the defaults in settings (ROUND_*)."""

    beta = serializers.FloatField(required=False, min_value=0.001, max_value=10)
    learning_rate = serializers.FloatField(required=False, min_value=1e-8, max_value=1e-2)
    epochs = serializers.IntegerField(required=False, min_value=1, max_value=20)
    batch_size = serializers.IntegerField(required=False, min_value=1, max_value=512)
    max_length = serializers.IntegerField(required=False, min_value=32, max_value=8192)
    max_steps = serializers.IntegerField(required=False, min_value=-1)
    lora_rank = serializers.IntegerField(required=False, min_value=1, max_value=256)
    loss_type = serializers.ChoiceField(required=False, choices=SUPPORTED_LOSS_TYPES)


class RoundOutput(serializers.ModelSerializer[TrainingRound]):
    parent_version = serializers.CharField(source="parent_version.name", read_only=True)
    result_version = serializers.CharField(source="result_version.name", read_only=True, allow_null=True)
    progress_percent = serializers.IntegerField(read_only=True)
    votes_read = serializers.SerializerMethodField()

    class Meta:
        model = TrainingRound
        fields = [
            "id", "status", "trigger", "parent_version", "result_version", "config", "rules", "votes_read",
            "train_pairs", "heldout_pairs", "progress_percent", "metrics", "evaluation", "phase_seconds",
            "override_reason", "error", "log_tail", "created_at", "started_at", "finished_at",
        ]  # fmt: skip

    def get_votes_read(self, training_round: TrainingRound) -> int:
        return len(training_round.judgement_ids)


def _round_error(error: rounds.RoundError) -> Response:
    return Response({"detail": str(error), "code": "conflict"}, status=status.HTTP_409_CONFLICT)


@extend_schema(
    request=RoundInput,
    responses={201: RoundOutput, 400: OpenApiResponse(description="Invalid config fields, named in `errors`."),
               409: OpenApiResponse(description="A round is running, or there are too few votes (`detail`).")},
    summary="Start a training round",
)  # fmt: skip
@api_view(["POST"])
@permission_classes([IsAdminUser])
def rounds_create(request: Request) -> Response:
    data = RoundInput(data=request.data)
    data.is_valid(raise_exception=True)
    try:
        training_round = rounds.round_start(
            trigger=TrainingRound.Trigger.API, started_by=_annotator(request), overrides=dict(data.validated_data)
        )
    except rounds.RoundError as error:
        return _round_error(error)
    return Response(RoundOutput(training_round).data, status=status.HTTP_201_CREATED)


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
    try:
        rounds.round_cancel(training_round=training_round)
    except rounds.RoundError as error:
        return _round_error(error)
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
    try:
        rounds.round_promote(
            training_round=training_round, by=_annotator(request), reason=data.validated_data["reason"]
        )
    except rounds.RoundError as error:
        return _round_error(error)
    return Response(RoundOutput(training_round).data, status=status.HTTP_202_ACCEPTED)


class VersionOutput(serializers.ModelSerializer[ModelVersion]):
    parent_version = serializers.CharField(source="parent.name", read_only=True, allow_null=True)

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "parent_version", "status", "adapter_path", "base_model", "created_at", "serving_since"]


@extend_schema(
    request=None,
    responses={200: VersionOutput, 409: OpenApiResponse(description="It cannot serve (rejected or imported)."),
               503: OpenApiResponse(description="The model server could not load it; nothing changed.")},
    summary="Make a model version serve new pairs (roll back or forward)",
)  # fmt: skip
@api_view(["POST"])
@permission_classes([IsAdminUser])
def model_versions_serve(request: Request, version_id: int) -> Response:
    version = get_object_or_404(ModelVersion, pk=version_id)
    try:
        with client_from_settings() as client:
            services.model_version_serve(version=version, client=client)
    except ModelServerUnavailable as error:
        return Response({"detail": str(error), "code": "unavailable"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
    except ValueError as error:
        return Response({"detail": str(error), "code": "conflict"}, status=status.HTTP_409_CONFLICT)
    return Response(VersionOutput(version).data)
