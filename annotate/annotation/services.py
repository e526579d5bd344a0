"""Annotation services: leasing pairs to annotators (the queue), recording votes, gold pairs, decisions about
annotators. Sampling pairs lives in sampling.py, training rounds in rounds.py.

The queue under concurrency: a pair has `judgements_required` places (its campaign's overlap k); `judgement_count`
votes and `lease_count` live leases take them. A lease takes the next open pair with a row lock that skips rows
other annotators are locking, and re-checks the free place in the same transaction with a conditional update; a
vote moves its place from the lease to the count. So a pair never collects more votes than it needs, annotators
racing for the same pair each get another one, and nobody is told "no pair" while one is open for them.
"""

from __future__ import annotations

import logging
import random
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from annotate.errors import Conflict, Invalid
from annotate.hooks.events import VOTE_RECORDED, webhook_events_emit
from annotate.models import (
    AnnotatorAction,
    AnnotatorStanding,
    Assignment,
    Campaign,
    Judgement,
    ModelVersion,
    Pair,
)
from annotate.sampling import services as sampling

logger = logging.getLogger(__name__)

SCREEN_CHOICES = ("left", "right", "tie", "both_bad")
SELECTED = ("pair__prompt", "pair__completion_a", "pair__completion_b", "pair__campaign")


# --- Leasing pairs to annotators -----------------------------------------------------------------------------


def _lease_expiry() -> Any:
    return timezone.now() + timedelta(seconds=settings.LEASE_SECONDS)


def annotator_is_paused(annotator: User) -> bool:
    return AnnotatorStanding.objects.filter(annotator=annotator, paused=True).exists()


def assignment_current(*, annotator: User) -> Assignment | None:
    """The pair this annotator holds and has not answered yet, if any (a reload shows the same pair)."""
    return (
        Assignment.objects.select_related(*SELECTED)
        .filter(annotator=annotator, status=Assignment.Status.LEASED, expires_at__gt=timezone.now())
        .order_by("-leased_at")
        .first()
    )


def assignment_lease_next(*, annotator: User) -> Assignment | None:
    """Lease a pair to this annotator: theirs already, else the next open one they may see (at their campaign's
    rates a gold pair or a repeat instead). None when none is open for them."""
    current = assignment_current(annotator=annotator)
    if current is not None:
        Assignment.objects.filter(pk=current.pk, status=Assignment.Status.LEASED).update(expires_at=_lease_expiry())
        current.refresh_from_db(fields=["expires_at", "status"])
        return current
    if annotator_is_paused(annotator):
        return None
    campaigns = list(Campaign.objects.open_to(annotator).values_list("id", flat=True))
    if not campaigns:
        return None
    leased = _pair_lease_open(annotator, campaigns)
    if leased is None and leases_expire() > 0:
        leased = _pair_lease_open(annotator, campaigns)  # leases that ran out freed places
    if leased is None:
        return None
    assignment = _instead_gold_or_repeat(annotator, leased) or leased
    return Assignment.objects.select_related(*SELECTED).get(pk=assignment.pk)


def _open_pairs_for(annotator: User, campaigns: list[int]) -> QuerySet[Pair]:
    seen = Assignment.objects.filter(pair=OuterRef("pk"), annotator=annotator)
    return Pair.objects.open().filter(campaign_id__in=campaigns).filter(~Exists(seen))


def _pair_lease_open(annotator: User, campaigns: list[int]) -> Assignment | None:
    """Take a place on the open pair with the fewest votes (the serving version's pairs first, then the oldest)."""
    serving = ModelVersion.objects.filter(status=ModelVersion.Status.SERVING).values_list("id", flat=True).first()
    scopes = [_open_pairs_for(annotator, campaigns)]
    if serving is not None:
        scopes.insert(0, scopes[0].filter(sampled_from_id=serving))
    for scope in scopes:
        for _attempt in range(5):
            with transaction.atomic():
                # Rows other annotators are leasing right now are skipped, not waited for: each gets another pair.
                pair = (
                    scope.select_related("campaign")
                    .order_by("judgement_count", "id")
                    .select_for_update(skip_locked=True, of=("self",))
                    .first()
                )
                if pair is None:
                    break
                taken = Pair.objects.filter(
                    pk=pair.pk, judgement_count__lt=F("judgements_required") - F("lease_count")
                ).update(lease_count=F("lease_count") + 1)
                if taken != 1:
                    continue  # filled between the read and the lock (a database without row locks): next one
                try:
                    with transaction.atomic():
                        return Assignment.objects.create(
                            pair=pair,
                            annotator=annotator,
                            a_on_left=secrets.randbits(1) == 1,
                            expires_at=_lease_expiry(),
                        )
                except IntegrityError:
                    # They were given this pair meanwhile (two tabs asking at once): give the place back.
                    Pair.objects.filter(pk=pair.pk).update(lease_count=F("lease_count") - 1)
                    continue
    return None


def _instead_gold_or_repeat(annotator: User, leased: Assignment) -> Assignment | None:
    """At the campaign's rates, swap the pair just leased for a gold pair or a repeat; None keeps the pair."""
    campaign = leased.pair.campaign
    if campaign is None or (campaign.gold_rate <= 0 and campaign.repeat_rate <= 0):
        return None
    draw = random.random()
    if draw < campaign.gold_rate:
        replacement = _assignment_gold(annotator, campaign)
    elif draw < campaign.gold_rate + campaign.repeat_rate:
        replacement = _assignment_repeat(annotator, campaign)
    else:
        return None
    if replacement is not None:
        # The pair goes back to the queue as if it had never been offered (they may get it later).
        with transaction.atomic():
            _lease_release(leased)
            leased.delete()
    return replacement


def _assignment_gold(annotator: User, campaign: Campaign) -> Assignment | None:
    seen = Assignment.objects.filter(pair=OuterRef("pk"), annotator=annotator)
    gold = Pair.objects.filter(campaign=campaign).exclude(gold_choice="").filter(~Exists(seen)).order_by("?").first()
    if gold is None:
        return None
    try:
        return Assignment.objects.create(
            pair=gold,
            annotator=annotator,
            kind=Assignment.Kind.GOLD,
            a_on_left=secrets.randbits(1) == 1,
            expires_at=_lease_expiry(),
        )
    except IntegrityError:
        return None


def _assignment_repeat(annotator: User, campaign: Campaign) -> Assignment | None:
    """A pair this annotator judged at least REPEAT_MIN_VOTES_BETWEEN votes ago, not repeated yet, sides swapped."""
    recent = Judgement.objects.filter(annotator=annotator).order_by("-id")[: settings.REPEAT_MIN_VOTES_BETWEEN]
    repeated = Assignment.objects.filter(pair=OuterRef("pair"), annotator=annotator, kind=Assignment.Kind.REPEAT)
    earlier = (
        Judgement.objects.filter(annotator=annotator, is_repeat=False, pair__campaign=campaign, pair__gold_choice="")
        .exclude(pk__in=list(recent.values_list("id", flat=True)))
        .filter(~Exists(repeated))
        .select_related("assignment")
        .order_by("?")
        .first()
    )
    if earlier is None or earlier.a_on_left is None:
        return None
    try:
        return Assignment.objects.create(
            pair_id=earlier.pair_id,
            annotator=annotator,
            kind=Assignment.Kind.REPEAT,
            a_on_left=not earlier.a_on_left,
            expires_at=_lease_expiry(),
        )
    except IntegrityError:
        return None


def _lease_release(assignment: Assignment) -> None:
    if assignment.kind == Assignment.Kind.PAIR:
        Pair.objects.filter(pk=assignment.pair_id, lease_count__gt=0).update(lease_count=F("lease_count") - 1)


def leases_expire() -> int:
    """Take back leases that ran out, freeing their places; returns how many. Run by beat and by an empty queue."""
    expired = 0
    now = timezone.now()
    stale = Assignment.objects.filter(status=Assignment.Status.LEASED, expires_at__lte=now)
    for assignment in stale.only("id", "pair_id", "kind")[:1000]:
        with transaction.atomic():
            if Assignment.objects.filter(pk=assignment.pk, status=Assignment.Status.LEASED).update(
                status=Assignment.Status.EXPIRED, finished_at=now
            ):
                _lease_release(assignment)
                expired += 1
    return expired


def _assignment_for_answer(*, annotator: User, pair_id: int) -> Assignment:
    """The annotator's assignment of this pair that an answer goes to: the open one, else the latest."""
    assignments = Assignment.objects.filter(pair_id=pair_id, annotator=annotator).order_by("-id")
    assignment = next((a for a in assignments if a.status == Assignment.Status.LEASED), None)
    assignment = assignment or assignments.first()
    if assignment is None:
        raise Conflict("this pair is not leased to you")
    if assignment.status == Assignment.Status.JUDGED:
        raise Conflict("you have already judged this pair")
    if assignment.status == Assignment.Status.SKIPPED:
        raise Conflict("you skipped this pair")
    return assignment


def assignment_skip(*, annotator: User, pair_id: int) -> None:
    assignment = _assignment_for_answer(annotator=annotator, pair_id=pair_id)
    if assignment.status == Assignment.Status.EXPIRED:
        return  # its place was given back already; skipping it again changes nothing
    with transaction.atomic():
        updated = Assignment.objects.filter(pk=assignment.pk, status=Assignment.Status.LEASED).update(
            status=Assignment.Status.SKIPPED, finished_at=timezone.now()
        )
        if updated != 1:
            raise Conflict("this pair was answered or taken back while you were skipping it")
        _lease_release(assignment)


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
    if "\x00" in rationale:
        errors["rationale"] = "must not contain NUL characters"
    return errors


def _existing_for_key(*, key: uuid.UUID, annotator: User, pair_id: int) -> RecordedJudgement | None:
    existing = Judgement.objects.filter(idempotency_key=key).first()
    if existing is None:
        return None
    if existing.annotator_id != annotator.pk or existing.pair_id != pair_id:
        raise Conflict("this idempotency key was already used for another vote")
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
    time_spent_ms: int | None = None,
) -> RecordedJudgement:
    """Record one vote given on screen sides (left/right/tie/both_bad), stored relative to the pair.

    The same idempotency key always answers with the vote stored under it (created=False), whichever of several
    requests sent at once wrote it. Invalid for bad fields; Conflict when the pair is not the annotator's to judge.
    `time_spent_ms` overrides the time measured from the lease (simulated annotators).
    """
    rationale = rationale.strip()
    errors = _validate_vote(choice, strength, rationale)
    if errors:
        raise Invalid(errors)
    replay = _existing_for_key(key=idempotency_key, annotator=annotator, pair_id=pair_id)
    if replay is not None:
        return replay
    try:
        judgement = _judgement_write(
            annotator=annotator,
            pair_id=pair_id,
            choice=choice,
            strength=strength,
            rationale=rationale,
            idempotency_key=idempotency_key,
            source=source,
            time_spent_ms=time_spent_ms,
        )
    except (IntegrityError, Conflict):
        # The same key sent twice at once: whichever request lost, the vote is stored; answer with it.
        replay = _existing_for_key(key=idempotency_key, annotator=annotator, pair_id=pair_id)
        if replay is not None:
            return replay
        raise
    transaction.on_commit(sampling.refill_if_low)
    webhook_events_emit(event=VOTE_RECORDED, payload=judgement_webhook_data(judgement))
    return RecordedJudgement(judgement, created=True)


def judgement_webhook_data(judgement: Judgement) -> dict[str, Any]:
    """What a webhook says about a vote: who, on which pair, what (the rationale stays here)."""
    return {
        "judgement": judgement.pk,
        "pair": judgement.pair_id,
        "annotator": judgement.annotator.get_username() if judgement.annotator else None,
        "choice": judgement.choice,
        "strength": judgement.strength,
        "source": judgement.source,
        "is_repeat": judgement.is_repeat,
    }


def _judgement_write(
    *,
    annotator: User,
    pair_id: int,
    choice: str,
    strength: int | None,
    rationale: str,
    idempotency_key: uuid.UUID,
    source: str,
    time_spent_ms: int | None,
) -> Judgement:
    assignment = _assignment_for_answer(annotator=annotator, pair_id=pair_id)
    if choice in ("left", "right"):
        chose_a = (choice == "left") == assignment.a_on_left
        stored_choice = Judgement.Choice.A if chose_a else Judgement.Choice.B
    else:
        stored_choice = Judgement.Choice(choice)
    now = timezone.now()
    with transaction.atomic():
        was_leased = assignment.status == Assignment.Status.LEASED
        claimed = Assignment.objects.filter(pk=assignment.pk, status=assignment.status).update(
            status=Assignment.Status.JUDGED, finished_at=now
        )
        if claimed != 1:
            raise Conflict("this pair was answered or taken back while you were voting")
        if assignment.kind == Assignment.Kind.PAIR:
            _place_to_vote(pair_id, was_leased)
        elif assignment.kind == Assignment.Kind.GOLD:
            # Gold pairs are outside the open queue: their count only says how often they were answered.
            Pair.objects.filter(pk=pair_id).update(judgement_count=F("judgement_count") + 1)
        spent = time_spent_ms if time_spent_ms is not None else int((now - assignment.leased_at).total_seconds() * 1000)
        return Judgement.objects.create(
            pair_id=pair_id,
            annotator=annotator,
            assignment=assignment,
            choice=stored_choice,
            strength=strength if stored_choice in (Judgement.Choice.A, Judgement.Choice.B) else None,
            rationale=rationale,
            a_on_left=assignment.a_on_left,
            time_spent_ms=max(0, spent),
            idempotency_key=idempotency_key,
            source=source,
            is_repeat=assignment.kind == Assignment.Kind.REPEAT,
        )


def _place_to_vote(pair_id: int, was_leased: bool) -> None:
    """The vote takes the place its lease held; a vote on a lease that ran out needs a place still free."""
    pairs = Pair.objects.filter(pk=pair_id)
    if was_leased:
        moved = pairs.filter(judgement_count__lt=F("judgements_required"), lease_count__gt=0).update(
            judgement_count=F("judgement_count") + 1, lease_count=F("lease_count") - 1
        )
    else:
        moved = pairs.filter(judgement_count__lt=F("judgements_required") - F("lease_count")).update(
            judgement_count=F("judgement_count") + 1
        )
    if moved != 1:
        raise Conflict("your lease on this pair expired and it was given to someone else")


# --- Gold pairs and decisions about annotators --------------------------------------------------------------


def pair_mark_gold(*, pair: Pair, expected: str) -> Pair:
    """Make `pair` a gold pair with its expected answer (a, b, tie or both_bad; empty: no longer gold).

    Its votes, earlier and later, never train and are not exported unless asked; it is served at its campaign's
    gold rate and never counts towards the open queue."""
    if expected not in ("", *Judgement.Choice.values):
        raise Invalid({"expected": f"must be one of {', '.join(Judgement.Choice.values)} (or empty)"})
    Pair.objects.filter(pk=pair.pk).update(gold_choice=expected)
    pair.refresh_from_db()
    return pair


def annotator_act(*, annotator: User, action: str, by: User | None, reason: str) -> AnnotatorStanding:
    """Pause or resume an annotator, or exclude or include their votes; recorded with who and why."""
    reason = reason.strip()
    errors = {}
    if action not in AnnotatorAction.Action.values:
        errors["action"] = f"must be one of {', '.join(AnnotatorAction.Action.values)}"
    if not reason:
        errors["reason"] = "say why (it is kept with the decision)"
    if errors:
        raise Invalid(errors)
    field, value = {
        AnnotatorAction.Action.PAUSE: ("paused", True),
        AnnotatorAction.Action.RESUME: ("paused", False),
        AnnotatorAction.Action.EXCLUDE: ("votes_excluded", True),
        AnnotatorAction.Action.INCLUDE: ("votes_excluded", False),
    }[AnnotatorAction.Action(action)]
    with transaction.atomic():
        standing, _ = AnnotatorStanding.objects.select_for_update().get_or_create(annotator=annotator)
        setattr(standing, field, value)
        standing.save(update_fields=[field])
        AnnotatorAction.objects.create(annotator=annotator, action=action, reason=reason, by=by)
        if field == "paused" and value:
            for assignment in Assignment.objects.filter(annotator=annotator, status=Assignment.Status.LEASED):
                if Assignment.objects.filter(pk=assignment.pk, status=Assignment.Status.LEASED).update(
                    status=Assignment.Status.EXPIRED, finished_at=timezone.now()
                ):
                    _lease_release(assignment)
    return standing


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
