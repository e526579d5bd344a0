"""Keep talking through the API (annotate.turns): the next user turn after your vote, and how its pair is coming on.

An API client has no stream: a sampling worker writes the pair, which is then leased to the caller and comes first
from `GET /api/pairs/next/`. The same services as the page.
"""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.annotation.api import ID_MAX
from annotate.broker import enqueue
from annotate.models import Continuation
from annotate.turns import services


class ConversationInput(serializers.Serializer[Any]):
    pair = serializers.IntegerField(min_value=1, max_value=ID_MAX, help_text="The pair you voted on.")
    message = serializers.CharField(
        allow_blank=True, trim_whitespace=False, help_text="Your next user turn; the answer you chose comes before it."
    )
    idempotency_key = serializers.UUIDField()


class ConversationOutput(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    continues_pair = serializers.IntegerField(source="judgement.pair_id")
    status = serializers.ChoiceField(choices=Continuation.Status.choices)
    messages = serializers.ListField(child=serializers.DictField(), source="prompt.messages")
    pair = serializers.IntegerField(source="pair_id", allow_null=True, help_text="Its new pair, once ready.")
    attempts = serializers.IntegerField(help_text="Samplings that failed so far (the model server was away).")
    error = serializers.CharField(help_text="Why the last sampling failed, if one did.")
    idempotency_key = serializers.UUIDField()
    created_at = serializers.DateTimeField()


@extend_schema(
    request=ConversationInput,
    responses={
        202: OpenApiResponse(ConversationOutput, description="Stored; a worker writes its pair and leases it to you."),
        200: OpenApiResponse(ConversationOutput, description="Sent before (the same key, or the same message)."),
        400: OpenApiResponse(description="An empty or too long message, a NUL character (named in `errors`)."),
        409: OpenApiResponse(
            description="You did not vote on this pair, its campaign does not allow continuing, your vote chose no "
            "answer, or you continued it already with another message (reason in `detail`)."
        ),
    },
    summary="Continue the conversation of your vote with the next user turn",
)
@api_view(["POST"])
def conversations_create(request: Request) -> Response:
    data = ConversationInput(data=request.data)
    data.is_valid(raise_exception=True)
    started = services.continuation_start(
        annotator=cast(User, request.user),
        pair_id=data.validated_data["pair"],
        message=data.validated_data["message"],
        idempotency_key=data.validated_data["idempotency_key"],
    )
    if started.created:
        enqueue("annotate.tasks.continuation_make", started.continuation.pk)  # beat's sweep makes it if this fails
    return Response(
        ConversationOutput(started.continuation).data,
        status=status.HTTP_202_ACCEPTED if started.created else status.HTTP_200_OK,
    )


@extend_schema(
    responses={200: ConversationOutput, 404: OpenApiResponse(description="No such conversation of yours.")},
    summary="A continued conversation: its status, and its pair once ready",
)
@api_view(["GET"])
def conversation_detail(request: Request, continuation_id: int) -> Response:
    user = cast(User, request.user)
    continuations = Continuation.objects.select_related("judgement", "prompt")
    if not user.is_staff:
        continuations = continuations.filter(annotator=user)
    continuation = continuations.filter(pk=continuation_id).first()
    if continuation is None:
        raise Http404("no such conversation of yours")
    return Response(ConversationOutput(continuation).data)
