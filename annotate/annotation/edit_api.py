"""Staff review of written answers over the API (the same service as the pair page's review,
annotate/annotation/edit_views.py)."""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.annotation import edits
from annotate.annotation.api import HumanAnswerOutput
from annotate.models import HumanAnswer


class ReviewInput(serializers.Serializer[Any]):
    decision = serializers.ChoiceField(choices=["reject", "accept"], help_text="accept: take a rejection back.")
    reason = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=settings.RATIONALE_MAX_LENGTH,
        help_text="Why (required to reject); kept with who and when.",
    )


class ReviewedAnswer(HumanAnswerOutput):
    judgement = serializers.IntegerField(source="judgement_id")
    author = serializers.CharField(source="author.username")
    reviewed_by = serializers.CharField(source="reviewed_by.username", allow_null=True)
    reviewed_at = serializers.DateTimeField(allow_null=True)
    review_reason = serializers.CharField()


REFUSALS = {
    400: "Invalid fields, named in `errors` (a rejection needs a reason).",
    404: "No such written answer.",
    409: "It is not in the state the decision changes (reviewed meanwhile).",
}


@extend_schema(
    request=ReviewInput,
    responses={200: ReviewedAnswer, **{code: OpenApiResponse(description=text) for code, text in REFUSALS.items()}},
    summary="Reject a written answer (later rounds and exports leave it out), or accept it again",
)
@api_view(["POST"])
@permission_classes([IsAdminUser])
def edits_review(request: Request, answer_id: int) -> Response:
    human_answer = get_object_or_404(HumanAnswer.objects.select_related("author", "reviewed_by"), pk=answer_id)
    data = ReviewInput(data=request.data)
    data.is_valid(raise_exception=True)
    edits.human_answer_review(
        human_answer=human_answer,
        by=cast(User, request.user),  # IsAdminUser let only staff users through
        reject=data.validated_data["decision"] == "reject",
        reason=data.validated_data["reason"],
    )
    return Response(ReviewedAnswer(human_answer).data)
