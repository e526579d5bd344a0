"""Everything that writes: sampling pairs, leasing them to annotators, recording votes."""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Case, Count, F, Q, When
from django.utils import timezone

from annotate import sampling
from annotate.models import Assignment, Judgement, ModelVersion, Pair

logger = logging.getLogger(__name__)

SCREEN_CHOICES = ("left", "right", "tie", "both_bad")


class AnnotationError(Exception):
    """An annotator's request that cannot be carried out; the message is shown to them."""

    code = "invalid"


class LeaseConflict(AnnotationError):
    code = "conflict"


class InvalidJudgement(AnnotationError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


# --- Leasing pairs to annotators -----------------------------------------------------------------------------


def _lease_expiry() -> Any:
    return timezone.now() + timedelta(seconds=settings.LEASE_SECONDS)


def assignment_current(*, annotator: User) -> Assignment | None:
    """The pair this annotator holds and has not answered yet, if any (a reload shows the same pair)."""
    return (
        Assignment.objects.select_related("pair__prompt", "pair__completion_a", "pair__completion_b")
        .filter(annotator=annotator, status=Assignment.Status.LEASED)
        .filter(pair__judgement_count__lt=F("pair__judgements_required"))
        .order_by("-leased_at")
        .first()
    )


def assignment_lease_next(*, annotator: User) -> Assignment | None:
    """Lease a pair to this annotator: theirs already, or the oldest one they may see. None if none is ready."""
    current = assignment_current(annotator=annotator)
    if current is not None:
        # Still theirs (nobody else was given the pair, or its status would be expired): renew the lease.
        Assignment.objects.filter(pk=current.pk, status=Assignment.Status.LEASED).update(expires_at=_lease_expiry())
        current.refresh_from_db(fields=["expires_at", "status"])
        return current
    # Pairs from the serving version first (the freshest on-policy data), then the oldest first.
    from_serving = Case(When(sampled_from__status=ModelVersion.Status.SERVING, then=0), default=1)
    candidates = Pair.objects.available_for(annotator).order_by(from_serving, "id").values_list("id", flat=True)
    for pair_id in candidates[:20]:
        now = timezone.now()
        try:
            with transaction.atomic():
                # A lease that ran out is taken back before the pair goes to someone else.
                Assignment.objects.filter(pair_id=pair_id, status=Assignment.Status.LEASED, expires_at__lte=now).update(
                    status=Assignment.Status.EXPIRED, finished_at=now
                )
                assignment = Assignment.objects.create(
                    pair_id=pair_id,
                    annotator=annotator,
                    a_on_left=secrets.randbits(1) == 1,
                    leased_at=now,
                    expires_at=_lease_expiry(),
                )
        except IntegrityError:
            continue  # another annotator leased it between our query and our insert
        return Assignment.objects.select_related("pair__prompt", "pair__completion_a", "pair__completion_b").get(
            pk=assignment.pk
        )
    return None


def _assignment_for_answer(*, annotator: User, pair_id: int) -> Assignment:
    assignment = Assignment.objects.filter(pair_id=pair_id, annotator=annotator).first()
    if assignment is None:
        raise LeaseConflict("this pair is not leased to you")
    if assignment.status == Assignment.Status.JUDGED:
        raise LeaseConflict("you have already judged this pair")
    if assignment.status == Assignment.Status.SKIPPED:
        raise LeaseConflict("you skipped this pair")
    if assignment.status == Assignment.Status.EXPIRED:
        raise LeaseConflict("your lease on this pair expired and it was given to someone else")
    return assignment


def assignment_skip(*, annotator: User, pair_id: int) -> None:
    assignment = _assignment_for_answer(annotator=annotator, pair_id=pair_id)
    updated = Assignment.objects.filter(pk=assignment.pk, status=Assignment.Status.LEASED).update(
        status=Assignment.Status.SKIPPED, finished_at=timezone.now()
    )
    if updated != 1:
        raise LeaseConflict("this pair was answered or taken back while you were skipping it")


# --- Recording votes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedJudgement:
    judgement: Judgement
    created: bool


def _validate_vote(choice: str, strength: int | None, rationale: str) -> dict[str, str]:
    errors = {}
    if choice not in SCREEN_CHOICES:
        errors["choice"] = f"must be one of {', '.join(SCREEN_CHOICES)}"
    if choice in ("left", "right"):
        if strength not in (1, 2, 3):
            errors["strength"] = "must be 1 (slightly), 2 (clearly) or 3 (much better)"
    elif strength is not None:
        errors["strength"] = "is only given when one answer is better"
    if len(rationale) > settings.RATIONALE_MAX_LENGTH:
        errors["rationale"] = f"must be at most {settings.RATIONALE_MAX_LENGTH} characters"
    return errors


def _existing_for_key(*, key: uuid.UUID, annotator: User, pair_id: int) -> RecordedJudgement | None:
    existing = Judgement.objects.filter(idempotency_key=key).first()
    if existing is None:
        return None
    if existing.annotator_id != annotator.pk or existing.pair_id != pair_id:
        raise LeaseConflict("this idempotency key was already used for another vote")
    return RecordedJudgement(existing, created=False)


def judgement_record(
    *,
    annotator: User,
    pair_id: int,
    choice: str,
    strength: int | None,
    rationale: str,
    idempotency_key: uuid.UUID,
    source: str = Judgement.Source.HUMAN,
) -> RecordedJudgement:
    """Record one vote given on screen sides (left/right/tie/both_bad), stored relative to the pair.

    Sending the same idempotency key again returns the vote already stored and writes nothing.
    """
    rationale = rationale.strip()
    errors = _validate_vote(choice, strength, rationale)
    if errors:
        raise InvalidJudgement(errors)
    replay = _existing_for_key(key=idempotency_key, annotator=annotator, pair_id=pair_id)
    if replay is not None:
        return replay
    assignment = _assignment_for_answer(annotator=annotator, pair_id=pair_id)
    if choice in ("left", "right"):
        chose_a = (choice == "left") == assignment.a_on_left
        stored_choice = Judgement.Choice.A if chose_a else Judgement.Choice.B
    else:
        stored_choice = Judgement.Choice(choice)
    now = timezone.now()
    try:
        with transaction.atomic():
            claimed = Assignment.objects.filter(pk=assignment.pk, status=Assignment.Status.LEASED).update(
                status=Assignment.Status.JUDGED, finished_at=now
            )
            if claimed != 1:
                raise LeaseConflict("this pair was answered or taken back while you were voting")
            judgement = Judgement.objects.create(
                pair_id=pair_id,
                annotator=annotator,
                assignment=assignment,
                choice=stored_choice,
                strength=strength if stored_choice in (Judgement.Choice.A, Judgement.Choice.B) else None,
                rationale=rationale,
                a_on_left=assignment.a_on_left,
                time_spent_ms=int((now - assignment.leased_at).total_seconds() * 1000),
                idempotency_key=idempotency_key,
                source=source,
            )
            Pair.objects.filter(pk=pair_id).update(judgement_count=F("judgement_count") + 1)
    except (IntegrityError, LeaseConflict):
        # The same key sent twice at once: the other request stored the vote; answer with it.
        replay = _existing_for_key(key=idempotency_key, annotator=annotator, pair_id=pair_id)
        if replay is not None:
            return replay
        raise
    transaction.on_commit(sampling.refill_if_low)
    return RecordedJudgement(judgement, created=True)


# --- Progress ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    today: int
    total: int


def annotator_progress(*, annotator: User) -> Progress:
    start_of_day = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    counts = Judgement.objects.filter(annotator=annotator).aggregate(
        total=Count("id"), today=Count("id", filter=Q(created_at__gte=start_of_day))
    )
    return Progress(today=counts["today"], total=counts["total"])
