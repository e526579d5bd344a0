"""The annotation API, for annotators: lease a pair, vote, undo the last vote, skip. The same services as the
HTML views.

Outside clients rely on these shapes: extend them, never rename.
"""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.annotation import edits, rankings, services
from annotate.judging import services as judging
from annotate.models import MAX_ANSWERS_PER_PAIR, Assignment, HumanAnswer, Judgement, JudgeVerdict
from annotate.sampling import services as sampling

# Ids are 64-bit integer columns: a larger number is refused as a bad field, not sent to the database.
ID_MAX = 2**63 - 1


def _annotator(request: Request) -> User:
    return cast(User, request.user)  # IsAuthenticated, the default permission, let only users through


class AnswerSerializer(serializers.Serializer[Any]):
    text = serializers.CharField()


class JudgeHintOutput(serializers.Serializer[Any]):
    """The AI judge's verdict, as the annotate page shows it: on the sides as this annotator sees them."""

    verdict = serializers.IntegerField(
        source="pk", help_text="Send it back as `judge_verdict` with the vote: the vote is recorded as made with it."
    )
    choice = serializers.SerializerMethodField(
        help_text="left or right (the answer it preferred, as shown), tie, or unsure (it changed its mind when the "
        "answers were swapped)."
    )
    confidence = serializers.FloatField(allow_null=True)

    def get_choice(self, verdict: JudgeVerdict) -> str:
        return _verdict_on_screen(verdict, self.context["assignment"])


def _verdict_on_screen(verdict: JudgeVerdict, assignment: Assignment) -> str:
    """The judge's choice on the sides as this annotator sees them (left or right), else as it is (tie, unsure)."""
    if verdict.choice not in (Judgement.Choice.A, Judgement.Choice.B):
        return verdict.choice
    return "left" if (verdict.choice == Judgement.Choice.A) == assignment.a_on_left else "right"


class NextPairOutput(serializers.Serializer[Any]):
    pair = serializers.IntegerField(source="pair_id")
    prompt = serializers.ListField(child=serializers.DictField(), source="pair.prompt.messages")
    left = AnswerSerializer()
    right = AnswerSerializer()
    lease_expires = serializers.DateTimeField(source="expires_at")
    answers = serializers.SerializerMethodField(
        help_text="A ranking pair's answers in the order to rank them by (`ranks` follows it); empty for two answers."
    )

    judge_hint = serializers.SerializerMethodField(
        help_text="The campaign's AI judge's verdict on this pair, only when the campaign shows it to annotators (as "
        "the annotate page does); null otherwise, and always on gold pairs and repeats."
    )

    @extend_schema_field(JudgeHintOutput(allow_null=True))
    def get_judge_hint(self, assignment: Assignment) -> dict[str, Any] | None:
        verdict = judging.judge_hint_for(assignment)
        return JudgeHintOutput(verdict, context={"assignment": assignment}).data if verdict else None

    def get_answers(self, assignment: Assignment) -> list[dict[str, str]]:
        if not assignment.pair.is_ranking:
            return []
        answers = assignment.pair.answers()
        return [{"text": answers[position].text} for position in assignment.answer_order]


@extend_schema(
    responses={200: NextPairOutput, 204: OpenApiResponse(description="No pair is ready; try again shortly.")},
    summary="Lease the next pair to compare",
)
@api_view(["GET"])
def pairs_next(request: Request) -> Response:
    assignment = services.assignment_lease_next(annotator=_annotator(request))
    if assignment is None:
        sampling.pairs_refill_request()
        return Response(status=status.HTTP_204_NO_CONTENT)
    return Response(next_pair_data(assignment))


# The two hot answers of the annotator's cycle are written out by hand: a DRF serializer deep-copies its declared
# fields for every instance it renders, a share of the cycle's CPU. The serializers above stay what the OpenAPI schema
# and the rarer answers (an undo) use; tests/annotate/test_api_output.py holds the two to the same output.
_DATETIME = serializers.DateTimeField()


def _judge_hint_data(assignment: Assignment) -> dict[str, Any] | None:
    verdict = judging.judge_hint_for(assignment)
    if verdict is None:
        return None
    confidence = verdict.confidence
    return {
        "verdict": verdict.pk,
        "choice": _verdict_on_screen(verdict, assignment),
        "confidence": None if confidence is None else float(confidence),
    }


def next_pair_data(assignment: Assignment) -> dict[str, Any]:
    """NextPairOutput(assignment).data, without the serializer's per-instance copies of its fields."""
    pair = assignment.pair
    if pair.is_ranking:
        answers = pair.answers()
        ranked = [{"text": answers[position].text} for position in assignment.answer_order]
    else:
        ranked = []
    return {
        "pair": assignment.pair_id,
        "prompt": [dict(message) for message in pair.prompt.messages],
        "left": {"text": assignment.left.text},
        "right": {"text": assignment.right.text},
        "lease_expires": _DATETIME.to_representation(assignment.expires_at),
        "answers": ranked,
        "judge_hint": _judge_hint_data(assignment),
    }


class JudgementInput(serializers.Serializer[Any]):
    pair = serializers.IntegerField(min_value=1, max_value=ID_MAX)
    choice = serializers.ChoiceField(
        choices=[*services.SCREEN_CHOICES, *rankings.RANKING_CHOICES],
        help_text="left, right, tie or both_bad; for a ranking pair rank (with `ranks`) or all_bad.",
    )
    ranks = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ANSWERS_PER_PAIR),
        required=False,
        allow_null=True,
        default=None,
        max_length=MAX_ANSWERS_PER_PAIR,
        help_text="A ranking pair's ranks, one per answer in the order `answers` listed them; 1 the best, equal ranks "
        "a tie.",
    )
    strength = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=1,
        max_value=3,
        help_text="1 slightly, 2 clearly, 3 much better; only with `left` or `right`.",
    )
    rationale = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=True)
    idempotency_key = serializers.UUIDField()
    edit = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        trim_whitespace=False,
        help_text="A better answer written with the vote, where the pair's campaign takes them (edits_allowed).",
    )
    edit_from = serializers.ChoiceField(
        choices=edits.EDIT_FROM_CHOICES,
        required=False,
        default="",
        help_text="The side whose answer the edit started from; empty: the side voted for (none after tie, both_bad).",
    )
    judge_verdict = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=1,
        max_value=ID_MAX,
        help_text="`judge_hint.verdict` when the pair came with the AI judge's verdict: the vote is recorded as made "
        "with it on screen. A verdict that was not shown for this pair is ignored.",
    )


class HumanAnswerOutput(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    text = serializers.CharField()
    started_from = serializers.IntegerField(source="started_from_id", allow_null=True, help_text="A completion id.")
    chars_added = serializers.IntegerField()
    chars_removed = serializers.IntegerField()
    status = serializers.CharField(help_text="accepted or rejected (by staff).")


class JudgementOutput(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    pair = serializers.IntegerField(source="pair_id")
    choice = serializers.CharField(source="choice_on_screen", help_text="As shown: left, right, tie or both_bad.")
    choice_relative_to_pair = serializers.CharField(source="choice", help_text="a, b, tie or both_bad.")
    strength = serializers.IntegerField(allow_null=True)
    ranking = serializers.ListField(
        child=serializers.IntegerField(), allow_null=True, help_text="Ranks by the pair's positions (A, B, extras)."
    )
    rationale = serializers.CharField()
    idempotency_key = serializers.UUIDField()
    time_spent_ms = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    edit = serializers.SerializerMethodField(help_text="The answer written with the vote, if any.")

    @extend_schema_field(HumanAnswerOutput(allow_null=True))
    def get_edit(self, judgement: Judgement) -> dict[str, Any] | None:
        try:
            human_answer = judgement.human_answer  # known already for a vote just recorded
        except HumanAnswer.DoesNotExist:
            return None
        return HumanAnswerOutput(human_answer).data


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
    recorded = edits.judgement_record_with_edit(
        annotator=_annotator(request),
        pair_id=data.validated_data["pair"],
        choice=data.validated_data["choice"],
        strength=data.validated_data["strength"],
        rationale=data.validated_data["rationale"],
        idempotency_key=data.validated_data["idempotency_key"],
        edit=data.validated_data["edit"],
        edit_from=data.validated_data["edit_from"],
        ranks=_ranks(data.validated_data),
    )
    verdict = data.validated_data["judge_verdict"]
    judging.judge_hint_record(judgement=recorded.judgement, verdict_id=None if verdict is None else str(verdict))
    return Response(
        judgement_data(recorded.judgement),
        status=status.HTTP_201_CREATED if recorded.created else status.HTTP_200_OK,
    )


def judgement_data(judgement: Judgement) -> dict[str, Any]:
    """JudgementOutput(judgement).data, without the serializer's per-instance copies of its fields."""
    try:
        human_answer = judgement.human_answer  # known already for a vote just recorded
    except HumanAnswer.DoesNotExist:
        edit = None
    else:
        edit = HumanAnswerOutput(human_answer).data
    ranking = judgement.ranking
    return {
        "id": judgement.pk,
        "pair": judgement.pair_id,
        "choice": str(judgement.choice_on_screen),
        "choice_relative_to_pair": str(judgement.choice),
        "strength": judgement.strength,
        "ranking": None if ranking is None else [int(rank) for rank in ranking],
        "rationale": str(judgement.rationale),
        "idempotency_key": str(judgement.idempotency_key),
        "time_spent_ms": judgement.time_spent_ms,
        "created_at": _DATETIME.to_representation(judgement.created_at),
        "edit": edit,
    }


def _ranks(validated: dict[str, Any]) -> list[int] | None:
    """The ranks sent; a ranking's choice without them is an empty ranking (the service says what is missing)."""
    if validated["ranks"] is None and validated["choice"] in rankings.RANKING_CHOICES:
        return []
    return validated["ranks"]


class UndoInput(serializers.Serializer[Any]):
    judgement = serializers.IntegerField(
        min_value=1, max_value=ID_MAX, help_text="The id of your last vote (`id` in the answer that recorded it)."
    )


@extend_schema(
    request=UndoInput,
    responses={
        200: OpenApiResponse(NextPairOutput, description="The vote is gone; its pair is leased to you again."),
        400: OpenApiResponse(description="No vote named (or not an id), in `errors`."),
        409: OpenApiResponse(
            description="Not your last vote (someone else's, an older one, or undone already), its lease has run "
            "out, a training round has read it, or your work is paused (reason in `detail`)."
        ),
    },
    summary="Undo your last vote; its pair comes back to you",
)
@api_view(["POST"])
def judgements_undo(request: Request) -> Response:
    data = UndoInput(data=request.data)
    data.is_valid(raise_exception=True)
    assignment = services.judgement_undo(annotator=_annotator(request), judgement_id=data.validated_data["judgement"])
    return Response(NextPairOutput(assignment).data)


class SkipInput(serializers.Serializer[Any]):
    pair = serializers.IntegerField(min_value=1, max_value=ID_MAX)


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
