"""Keep talking: after a vote, the annotator writes the next user turn and the conversation goes on.

The answer they chose becomes the assistant's turn; with their new message it makes a longer conversation, stored as
a `Prompt` of several turns (inactive: only this continuation samples it) with a `Continuation` linking it to the vote
it continues. Its pair is sampled live, streamed into the page (annotate.turns.streaming) or, without a stream, by a
sampling worker (`continuation_pair_make`), and leased to the annotator who wrote the turn. Whoever samples it holds
the continuation's claim, which runs out, so a stream or a worker that died leaves nothing stuck: beat's
`continuations-make` hands what nobody holds to a worker.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from annotate.annotation import rankings
from annotate.broker import enqueue
from annotate.cache import cached_read
from annotate.errors import Conflict, Invalid
from annotate.invalidation import LEASE_INPUTS
from annotate.models import (
    AnnotatorStanding,
    Assignment,
    Campaign,
    Continuation,
    HumanAnswer,
    Judgement,
    ModelVersion,
    Pair,
    Prompt,
    conversation_hash,
)
from annotate.owners import holder_name
from annotate.sampling.generation import (
    ModelServerPool,
    ModelServerRefused,
    ModelServerUnavailable,
    Sample,
    client_from_settings,
)
from annotate.sampling.services import AnswerRecipe, campaign_recipes, pair_create, recipes_for_answers

logger = logging.getLogger(__name__)

CONTINUATION_SOURCE = "continuation"
MULTI_TURN_TAG = "multi-turn"


def is_multi_turn(messages: list[dict[str, Any]]) -> bool:
    """A conversation with more than one user turn: what rounds and exports count as multi-turn."""
    return sum(1 for message in messages if message.get("role") == "user") > 1


# --- What the annotate page offers --------------------------------------------------------------------------------


def _campaigns_continuing() -> list[int]:
    """Ids of the open campaigns that allow continuing; cached with the annotator's other lease inputs, so a page
    in a deployment without multi-turn campaigns asks the database nothing more."""
    return cached_read(
        LEASE_INPUTS,
        "campaigns-continuing",
        lambda: list(Campaign.objects.filter(is_active=True, continuation_allowed=True).values_list("id", flat=True)),
    )


def continuation_offer(*, annotator: User) -> Judgement | None:
    """The annotator's last vote if its conversation may go on: cast on the page in a campaign that allows it, for
    one answer (the one that becomes the assistant's turn), on an ordinary pair, not continued yet, and recent."""
    campaigns = _campaigns_continuing()
    if not campaigns:
        return None
    last = (
        Judgement.objects.filter(annotator=annotator, assignment__isnull=False)
        .select_related("pair__prompt", "pair__campaign")
        .order_by("-id")
        .first()
    )
    if last is None or _refusal(last, campaigns) is not None:
        return None
    if last.created_at < timezone.now() - timedelta(seconds=settings.CONTINUATION_OFFER_SECONDS):
        return None
    return last


def _refusal(judgement: Judgement, campaigns: list[int]) -> str | None:
    """Why this vote's conversation may not go on, or None."""
    if judgement.pair.campaign_id not in campaigns:
        return "this campaign does not allow continuing the conversation"
    if judgement.is_repeat or judgement.pair.is_gold:
        return "this pair was a check, not a conversation to continue"
    if _chosen_answer(judgement) is None and _written_answer(judgement) is None:
        if judgement.ranking is not None:
            return "rank one answer best to continue from it (the first place is shared), or write a better answer"
        return "choose one answer to continue from (a tie or both-bad vote has none)"
    if Continuation.objects.filter(judgement=judgement).exists():
        return "you continued this conversation already"
    return None


def continuation_waiting(*, annotator: User) -> Continuation | None:
    """The continuation the annotator's page waits for (its pair not made yet), if any."""
    return (
        Continuation.objects.filter(annotator=annotator, annotator_waits=True)
        .exclude(status=Continuation.Status.READY)
        .select_related("prompt")
        .order_by("-id")
        .first()
    )


def continuation_stop_waiting(*, annotator: User, continuation_id: int) -> None:
    """The annotator goes on with other pairs; the pair is still made and leased to them when it is ready."""
    if not Continuation.objects.filter(pk=continuation_id, annotator=annotator).update(annotator_waits=False):
        raise Conflict("no such conversation of yours")


def continuation_retry(*, annotator: User, continuation_id: int) -> Continuation:
    """Sample a conversation that failed again (the model server was away for longer than its tries lasted)."""
    continuation = Continuation.objects.filter(pk=continuation_id, annotator=annotator).first()
    if continuation is None:
        raise Conflict("no such conversation of yours")
    if not continuation.retry():
        raise Conflict("this conversation has not failed: its pair is on its way or made")
    return continuation


# --- Writing the next turn -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartedContinuation:
    continuation: Continuation
    created: bool


def _validate_message(message: str) -> str:
    message = message.strip()
    if not message:
        raise Invalid({"message": "write the next message of the conversation"})
    if len(message) > settings.CONTINUATION_MESSAGE_MAX_CHARACTERS:
        raise Invalid({"message": f"must be at most {settings.CONTINUATION_MESSAGE_MAX_CHARACTERS} characters"})
    if "\x00" in message:
        raise Invalid({"message": "must not contain NUL characters"})
    return message


def _chosen_answer(judgement: Judgement) -> str | None:
    """The sampled answer the vote put first: the chosen side of a vote on two answers, the single answer ranked
    best in a ranking; None after a tie, "both bad", or a ranking whose first place is shared."""
    pair = judgement.pair
    if judgement.ranking is not None:
        top = rankings.ranking_top(judgement.ranking)
        return None if top is None or judgement.choice == Judgement.Choice.BOTH_BAD else pair.answers()[top].text
    if judgement.choice == Judgement.Choice.A:
        return pair.completion_a.text
    if judgement.choice == Judgement.Choice.B:
        return pair.completion_b.text
    return None


def _written_answer(judgement: Judgement) -> str | None:
    """The better answer the annotator wrote with the vote (annotate/annotation/edits.py), unless staff rejected it."""
    return (
        HumanAnswer.objects.filter(judgement=judgement, status=HumanAnswer.Status.ACCEPTED)
        .values_list("text", flat=True)
        .first()
    )


def _assistant_turn(judgement: Judgement) -> str:
    """The assistant's turn of the longer conversation: the answer the annotator wrote with the vote if any, else the
    answer they put first (_chosen_answer). Only called for a vote _refusal lets through, which has one of them."""
    turn = _written_answer(judgement) or _chosen_answer(judgement)
    if turn is None:
        raise Conflict("this vote has no answer to continue from")
    return turn


def _replay(*, key: uuid.UUID, annotator: User, pair_id: int, message: str) -> StartedContinuation | None:
    """A resend (same key, or the same message again on the same vote): the continuation already stored."""
    existing = (
        Continuation.objects.filter(Q(idempotency_key=key) | Q(judgement__pair_id=pair_id, annotator=annotator))
        .select_related("judgement", "prompt")
        .order_by("-id")
        .first()
    )
    if existing is None:
        return None
    same_vote = existing.annotator_id == annotator.pk and existing.judgement.pair_id == pair_id
    if existing.idempotency_key == key and not same_vote:
        raise Conflict("this idempotency key was already used for another conversation")
    if existing.idempotency_key != key and existing.prompt.last_user_message != message:
        raise Conflict("you continued this conversation already")
    return StartedContinuation(existing, created=False)


def continuation_start(
    *, annotator: User, pair_id: int, message: str, idempotency_key: uuid.UUID
) -> StartedContinuation:
    """The annotator's next user turn after their vote on `pair_id`: stores the longer conversation and a pending
    continuation whose pair is sampled next. Invalid for a bad message (empty, too long, NUL) and Conflict when the
    vote may not be continued; nothing is stored then. A resend answers with the continuation stored the first time."""
    message = _validate_message(message)
    replay = _replay(key=idempotency_key, annotator=annotator, pair_id=pair_id, message=message)
    if replay is not None:
        return replay
    judgement = (
        Judgement.objects.filter(pair_id=pair_id, annotator=annotator, is_repeat=False, assignment__isnull=False)
        .select_related("pair__prompt", "pair__campaign", "pair__completion_a", "pair__completion_b")
        .first()
    )
    if judgement is None:
        raise Conflict("you have not judged this pair")
    refusal = _refusal(judgement, _campaigns_continuing())
    if refusal is not None:
        # Continued meanwhile by the same request sent at once (it committed between the two reads): answer with it.
        replay = _replay(key=idempotency_key, annotator=annotator, pair_id=pair_id, message=message)
        if replay is not None:
            return replay
        raise Conflict(refusal)
    messages = [
        *judgement.pair.prompt.messages,
        {"role": "assistant", "content": _assistant_turn(judgement)},
        {"role": "user", "content": message},
    ]
    if sum(len(str(turn["content"])) for turn in messages) > settings.PROMPT_MAX_CHARACTERS:
        raise Invalid({"message": f"the conversation would be longer than {settings.PROMPT_MAX_CHARACTERS} characters"})
    try:
        with transaction.atomic():
            prompt = _prompt_for(messages, judgement.pair.prompt)
            continuation = Continuation.objects.create(
                judgement=judgement, annotator=annotator, prompt=prompt, idempotency_key=idempotency_key
            )
    except IntegrityError:
        # The same request twice at once (or a second tab): whichever lost answers with what the winner stored.
        replay = _replay(key=idempotency_key, annotator=annotator, pair_id=pair_id, message=message)
        if replay is None:
            raise
        return replay
    return StartedContinuation(continuation, created=True)


def _prompt_for(messages: list[dict[str, Any]], earlier: Prompt) -> Prompt:
    """The longer conversation as a prompt of the campaign's set: the one stored already when two annotators wrote
    the same turn after the same answer. Inactive, so the buffer's refills never sample it."""
    existing = Prompt.objects.filter(content_hash=conversation_hash(messages)).first()
    if existing is not None:
        return existing
    tags = sorted({*earlier.tags, MULTI_TURN_TAG}) if isinstance(earlier.tags, list) else [MULTI_TURN_TAG]
    return Prompt.objects.create(
        messages=messages, prompt_set=earlier.prompt_set, tags=tags, source=CONTINUATION_SOURCE, is_active=False
    )


# --- Making its pair ------------------------------------------------------------------------------------------------


def claim_seconds() -> float:
    """How long a claim on a continuation lasts: the longest a stream may take, and a margin to store its pair."""
    return settings.CONTINUATION_STREAM_SECONDS + 30


@dataclass(frozen=True)
class ContinuationWork:
    """What sampling a continuation's pair needs, read before the model server is asked, so that nothing reads the
    database while the answers are written."""

    continuation: Continuation
    serving: ModelVersion
    # One per answer: two, or the campaign's answers_per_pair (a ranking pair) when it asks for more.
    recipes: tuple[AnswerRecipe, ...]


def continuation_claim(*, continuation: Continuation, holder: str, client: ModelServerPool) -> ContinuationWork | None:
    """Claim the continuation for `holder` and read what its pair is sampled with; None when someone else holds it,
    it is made already, or no version serves (released again: it is made once one does)."""
    if not continuation.claim(holder=holder, seconds=claim_seconds()):
        return None
    serving = ModelVersion.objects.serving()
    campaign = Campaign.objects.select_related("opponent_version").filter(name=continuation.prompt.prompt_set).first()
    if serving is None:
        continuation.release(holder=holder, error="no model version serves", max_attempts=_max_attempts())
        return None
    sides = campaign_recipes(campaign, serving)
    try:
        for opponent in {recipe.version for recipe in sides} - {serving}:
            opponent.ensure_loaded(client)
    except (ModelServerRefused, ModelServerUnavailable) as error:
        continuation.release(holder=holder, error=f"the opponent version: {error}", max_attempts=_max_attempts())
        return None
    if sides[0] != sides[1] and secrets.randbelow(2):
        sides = (sides[1], sides[0])  # which side is A (and left) carries no meaning
    count = campaign.answers_per_pair if campaign is not None else 2
    return ContinuationWork(continuation, serving, recipes_for_answers(sides, count))


def _max_attempts() -> int:
    return settings.CONTINUATION_MAX_ATTEMPTS


def continuation_pair_store(*, work: ContinuationWork, holder: str, answers: tuple[Sample, ...]) -> Pair | None:
    """Store the answers (one per recipe: a ranking pair's extra ones after A and B) as the continuation's pair and
    lease it to its annotator, answer A on the left as the stream showed it. None (the continuation released, to be
    sampled again) when two answers are the same text or the claim was lost meanwhile."""
    continuation = work.continuation
    with transaction.atomic():
        pair = pair_create(
            prompt=continuation.prompt,
            version=work.serving,
            first=answers[0],
            second=answers[1],
            first_version=work.recipes[0].version,
            second_version=work.recipes[1].version,
            extra=[(recipe.version, answer) for recipe, answer in zip(work.recipes[2:], answers[2:], strict=True)],
        )
        if pair is None:
            continuation.release(holder=holder, error="two answers were the same", max_attempts=_max_attempts())
            return None
        if not continuation.finish(holder=holder, pair=pair):
            transaction.set_rollback(True)  # its claim ran out and another holder took it: theirs counts
            return None
        _lease_to_writer(pair, continuation.annotator_id)
    return pair


def _lease_to_writer(pair: Pair, annotator_id: int) -> None:
    """The new pair goes to the annotator who wrote the turn first, taking one of its places like any lease; when
    they are paused it simply waits in the queue."""
    if AnnotatorStanding.objects.filter(annotator_id=annotator_id, paused=True).exists():
        return
    taken = Pair.objects.filter(pk=pair.pk, judgement_count__lt=F("judgements_required") - F("lease_count")).update(
        lease_count=F("lease_count") + 1
    )
    if taken == 1:
        Assignment.objects.create(
            pair=pair,
            annotator_id=annotator_id,
            a_on_left=True,
            expires_at=timezone.now() + timedelta(seconds=settings.LEASE_SECONDS),
        )


def continuation_sampling_failed(*, work: ContinuationWork, holder: str, error: Exception) -> str:
    """Record a failed sampling: a refusal of the conversation itself ends it, anything else leaves it to be made
    later. Returns what the page says."""
    if isinstance(error, ModelServerRefused) and error.blames_the_request_body:
        work.continuation.fail(holder=holder, error=str(error))
        return f"The model server refused this conversation: {error}"
    work.continuation.release(holder=holder, error=str(error), max_attempts=_max_attempts())
    if work.continuation.status == Continuation.Status.FAILED:
        return f"The model server kept failing; this conversation was given up: {error}"
    return "The model server stopped answering. The pair will be written when it is back, and given to you then."


def continuation_pair_make(*, continuation_id: int) -> bool:
    """Sample a continuation's pair without a stream (a sampling worker): True when this call made it."""
    continuation = Continuation.objects.select_related("prompt").filter(pk=continuation_id).first()
    if continuation is None:
        return False
    holder = holder_name()
    with client_from_settings() as client:
        work = continuation_claim(continuation=continuation, holder=holder, client=client)
        if work is None:
            return False
        try:
            with ThreadPoolExecutor(max_workers=len(work.recipes), thread_name_prefix="continuation") as pool:
                futures = [pool.submit(recipe.sample, client, continuation.prompt) for recipe in work.recipes]
                answers = tuple(future.result() for future in futures)
        except (ModelServerUnavailable, ModelServerRefused) as error:
            logger.warning("continuation %s: %s", continuation_id, error)
            continuation_sampling_failed(work=work, holder=holder, error=error)
            return False
    return continuation_pair_store(work=work, holder=holder, answers=answers) is not None


def continuations_due() -> list[int]:
    """Continuations nobody is making: pending for longer than a page's stream would take to claim them, or held
    under a claim that ran out (its stream or worker died)."""
    now = timezone.now()
    grace = now - timedelta(seconds=settings.CONTINUATION_STREAM_GRACE_SECONDS)
    due = Continuation.objects.filter(
        Q(status=Continuation.Status.PENDING, created_at__lt=grace)
        | Q(status=Continuation.Status.SAMPLING, claim_expires_at__lt=now)
    )
    return list(due.order_by("id").values_list("id", flat=True)[:100])


def continuations_make_due() -> int:
    """Hand the continuations nobody is making to the sampling workers (beat's `continuations-make`)."""
    sent = 0
    for continuation_id in continuations_due():
        sent += enqueue("annotate.tasks.continuation_make", continuation_id)
    return sent
