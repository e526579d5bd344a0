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
import math
import random
import secrets
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Sum
from django.utils import timezone

from annotate.annotation import rankings
from annotate.cache import cache_generation, cached_for, cached_read
from annotate.errors import Conflict, Invalid
from annotate.events import VOTE_RECORDED, webhook_events_emit
from annotate.invalidation import LEASE_INPUTS
from annotate.models import (
    AnnotatorAction,
    AnnotatorStanding,
    Assignment,
    Campaign,
    Completion,
    Continuation,
    HumanAnswer,
    Judgement,
    ModelVersion,
    Pair,
    SamplingClaim,
    TrainingRound,
    UndoneJudgement,
)
from annotate.sampling import services as sampling

logger = logging.getLogger(__name__)

SCREEN_CHOICES = ("left", "right", "tie", "both_bad")
# The last answers a wait's estimate is taken from.
PAIR_ESTIMATE_ANSWERS = 20
SELECTED = ("pair__prompt", "pair__completion_a", "pair__completion_b", "pair__campaign")
# Which version serves only orders the open pairs (its pairs first), so a lease may go on using the one before for a
# few seconds after a switch: every open pair it offers is still a valid pair to vote on.
SERVING_VERSION_CACHE_SECONDS = 5


# --- Leasing pairs to annotators -----------------------------------------------------------------------------


def _lease_expiry() -> Any:
    return timezone.now() + timedelta(seconds=settings.LEASE_SECONDS)


def annotator_is_paused(annotator: User) -> bool:
    return AnnotatorStanding.objects.filter(annotator=annotator, paused=True).exists()


def _assignment_current_id(annotator: User) -> int | None:
    # Its id alone: most asks find none (an annotator asks after each vote), and a read of one column is a fraction
    # of the CPU of the read with the pair's ~70 columns over five tables (Django compiles each query every time).
    return (
        Assignment.objects.filter(annotator=annotator, status=Assignment.Status.LEASED, expires_at__gt=timezone.now())
        .order_by("-leased_at")
        .values_list("pk", flat=True)
        .first()
    )


def assignment_current(*, annotator: User) -> Assignment | None:
    """The pair this annotator holds and has not answered yet, if any (a reload shows the same pair)."""
    current = _assignment_current_id(annotator)
    if current is None:
        return None
    # Still theirs and open: it may have been answered or taken back between the two reads.
    return Assignment.objects.select_related(*SELECTED).filter(pk=current, status=Assignment.Status.LEASED).first()


def assignment_lease_next(*, annotator: User) -> Assignment | None:
    """Lease a pair to this annotator: theirs already, else the next open one they may see (at their campaign's
    rates a gold pair or a repeat instead). None when none is open for them."""
    current = _assignment_current_id(annotator)
    if current is not None:
        # Renewed, then read with its pair (the new expiry with it): as many statements as a wide read, then an
        # expiry read back. Answered or taken back meanwhile, it is not renewed and not returned: a new lease instead.
        Assignment.objects.filter(pk=current, status=Assignment.Status.LEASED).update(expires_at=_lease_expiry())
        held = Assignment.objects.select_related(*SELECTED).filter(pk=current, status=Assignment.Status.LEASED).first()
        if held is not None:
            return held
    # Both reads are cached until a standing, a campaign or a group membership changes (annotate/invalidation.py).
    generation = cache_generation(LEASE_INPUTS)
    if _annotator_is_paused_cached(annotator, generation):
        return None
    campaigns = _campaigns_within_quota(annotator, generation)
    if not campaigns:
        return None
    leased = _pair_lease_open(annotator, campaigns)
    if leased is None and leases_expire() > 0:
        leased = _pair_lease_open(annotator, campaigns)  # leases that ran out freed places
    if leased is None:
        return None
    assignment = _instead_gold_or_repeat(annotator, leased)
    if assignment is None:
        return leased  # read with its pair, prompt, answers and campaign: nothing to read again
    return Assignment.objects.select_related(*SELECTED).get(pk=assignment.pk)


def _annotator_is_paused_cached(annotator: User, generation: str | None = None) -> bool:
    """Whether they are paused, for serving and showing pages; what refuses work (an undo) asks the database."""
    return cached_read(
        LEASE_INPUTS, f"paused:{annotator.pk}", lambda: annotator_is_paused(annotator), generation=generation
    )


def _campaigns_open(annotator: User, generation: str | None = None) -> list[tuple[int, int | None]]:
    """(id, quota per annotator) of the campaigns open to this annotator."""
    return cached_read(
        LEASE_INPUTS,
        f"campaigns-open:{annotator.pk}",
        lambda: list(Campaign.objects.open_to(annotator).values_list("id", "quota_per_annotator")),
        generation=generation,
    )


def _campaigns_within_quota(annotator: User, generation: str | None = None) -> list[int]:
    """The campaigns open to this annotator where they have not given all the votes staff asked of them yet."""
    open_campaigns = _campaigns_open(annotator, generation)
    if all(quota is None for _, quota in open_campaigns):
        return [campaign for campaign, _ in open_campaigns]
    done = _votes_by_campaign(annotator)
    return [campaign for campaign, quota in open_campaigns if quota is None or done.get(campaign, 0) < quota]


def _votes_by_campaign(annotator: User) -> dict[int, int]:
    """The votes this annotator gave in each campaign (repeats are checks of themselves, not votes on pairs)."""
    return dict(
        Judgement.objects.filter(annotator=annotator, is_repeat=False, pair__campaign__isnull=False)
        .values_list("pair__campaign")
        .annotate(votes=Count("id"))
        .values_list("pair__campaign", "votes")
    )


def _open_pairs_for(annotator: User, campaigns: list[int]) -> QuerySet[Pair]:
    seen = Assignment.objects.filter(pair=OuterRef("pk"), annotator=annotator)
    return Pair.objects.open().filter(campaign_id__in=campaigns).filter(~Exists(seen))


def _pair_lease_open(annotator: User, campaigns: list[int]) -> Assignment | None:
    """Take a place on the open pair with the fewest votes (the serving version's pairs first, then the oldest)."""
    serving = cached_for(
        "serving-version-id",
        SERVING_VERSION_CACHE_SECONDS,
        lambda: ModelVersion.objects.filter(status=ModelVersion.Status.SERVING).values_list("id", flat=True).first(),
    )
    scopes = [_open_pairs_for(annotator, campaigns)]
    if serving is not None:
        scopes.insert(0, scopes[0].filter(sampled_from_id=serving))
    for scope in scopes:
        for _attempt in range(5):
            try:
                with transaction.atomic():
                    # Rows other annotators are leasing right now are skipped, not waited for: each gets another pair.
                    pair = (
                        scope.select_related("campaign", "prompt", "completion_a", "completion_b")
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
                    pair.lease_count += 1  # as the row now says: the lease is returned without reading it again
                    return Assignment.objects.create(
                        pair=pair, annotator=annotator, a_on_left=secrets.randbits(1) == 1, expires_at=_lease_expiry()
                    )
            except IntegrityError:
                # They were given this pair meanwhile (two tabs asking at once). The transaction rolled back, place
                # taken and all, without a savepoint of its own (two statements fewer on every lease): next one.
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


def _assignment_for_answer(*, annotator: User, pair_id: int, idempotency_key: uuid.UUID | None = None) -> Assignment:
    """The annotator's assignment of this pair that an answer goes to: the open one, else the latest.

    With a vote's `idempotency_key`, a Conflict also when a vote was stored or undone under that key: the same read
    asks, so a first vote costs one statement here; the caller's replay lookup then says which."""
    assignments = Assignment.objects.filter(pair_id=pair_id, annotator=annotator).select_related("pair").order_by("-id")
    if idempotency_key is not None:
        assignments = assignments.annotate(
            key_used=Exists(Judgement.objects.filter(idempotency_key=idempotency_key))
            | Exists(UndoneJudgement.objects.filter(idempotency_key=idempotency_key))
        )
    rows = list(assignments)
    if rows and getattr(rows[0], "key_used", False):
        raise Conflict("this idempotency key was already used")
    assignment = next((a for a in rows if a.status == Assignment.Status.LEASED), None)
    assignment = assignment or (rows[0] if rows else None)
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


def _validate_vote(choice: str, strength: int | None, rationale: str, ranks: Sequence[int] | None) -> dict[str, str]:
    errors = {}
    if ranks is not None:
        # A ranking (rankings.py): its ranks are checked against the pair's answers once the pair is known.
        if choice not in rankings.RANKING_CHOICES:
            errors["choice"] = f"must be one of {', '.join(rankings.RANKING_CHOICES)} with a ranking"
        elif choice == rankings.RANK and (problem := rankings.ranks_errors(ranks)):
            errors["ranks"] = problem
        if strength is not None:
            errors["strength"] = "is not given with a ranking"
    elif choice not in SCREEN_CHOICES:
        errors["choice"] = f"must be one of {', '.join(SCREEN_CHOICES)}"
    elif choice in ("left", "right"):
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
        if UndoneJudgement.objects.filter(idempotency_key=key).exists():
            # A late resend of a vote its annotator has undone since: casting it again would undo the undo.
            raise Conflict("this vote was undone; vote again on the page")
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
    ranks: Sequence[int] | None = None,
) -> RecordedJudgement:
    """Record one vote given on screen sides (left/right/tie/both_bad), stored relative to the pair.

    On a ranking pair (more than two answers) the vote is a ranking: `ranks` gives each answer's rank in the order
    the screen showed them and the choice is "rank", or "all_bad" (ranks then ignored); it is stored by the pair's
    own positions with the A/B choice it implies (annotate/annotation/rankings.py). A left/right/tie/both_bad vote
    on a ranking pair, or a ranking of the wrong number of answers, is Invalid.

    The same idempotency key always answers with the vote stored under it (created=False), whichever of several
    requests sent at once wrote it. Invalid for bad fields; Conflict when the pair is not the annotator's to judge.
    `time_spent_ms` overrides the time measured from the lease (simulated annotators).
    """
    rationale = rationale.strip()
    errors = _validate_vote(choice, strength, rationale, ranks)
    if errors:
        raise Invalid(errors)
    try:
        # A key used before (a resend, a vote undone since) is found by the write's first read, which refuses it.
        judgement = _judgement_write(
            annotator=annotator,
            pair_id=pair_id,
            choice=choice,
            strength=strength,
            rationale=rationale,
            idempotency_key=idempotency_key,
            source=source,
            time_spent_ms=time_spent_ms,
            ranks=ranks,
        )
    except (IntegrityError, Conflict):
        # A resend, or the same key sent twice at once: whichever request lost, the vote is stored; answer with it.
        # A key whose vote was undone is refused here, with why.
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
    ranks: Sequence[int] | None,
) -> Judgement:
    assignment = _assignment_for_answer(annotator=annotator, pair_id=pair_id, idempotency_key=idempotency_key)
    stored_choice, ranking = _stored_choice(assignment, choice, ranks)
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
            ranking=ranking,
        )


def _stored_choice(assignment: Assignment, choice: str, ranks: Sequence[int] | None) -> tuple[str, list[int] | None]:
    """The choice relative to the pair and, for a ranking, the ranks by the pair's positions. Invalid when the vote
    does not fit the pair: a ranking pair is ranked, a pair of two compared (or ranked), ranks match its answers."""
    count = assignment.pair.answer_count
    if ranks is None:
        if count > 2:
            raise Invalid({"choice": f"this pair shows {count} answers: rank them"})
        if choice in ("left", "right"):
            chose_a = (choice == "left") == assignment.a_on_left
            return (Judgement.Choice.A if chose_a else Judgement.Choice.B), None
        return Judgement.Choice(choice), None
    if choice == rankings.ALL_BAD:
        return Judgement.Choice.BOTH_BAD, rankings.ranking_all_bad(count)
    problem = rankings.ranks_errors(ranks, count)
    if problem:
        raise Invalid({"ranks": problem})
    ranking = rankings.ranking_by_position(ranks, assignment.answer_order)
    return rankings.choice_of_ranking(ranking), ranking


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


# --- Undoing the last vote ----------------------------------------------------------------------------------


def judgement_undoable(*, annotator: User) -> Judgement | None:
    """The annotator's last vote if they may still undo it: cast on the page, its lease not yet run out, no training
    round has read it (a round reads every vote up to its `last_judgement_id`), and they are not paused."""
    last = (
        Judgement.objects.filter(annotator=annotator, assignment__isnull=False)
        .select_related("assignment", "continuation")  # the join spares a statement on every page
        .order_by("-id")
        .first()
    )
    if last is None or last.source != Judgement.Source.HUMAN or _undo_refusal(last, hasattr(last, "continuation")):
        return None
    # Only whether the page offers the undo: judgement_undo asks the database before it changes anything.
    return None if _annotator_is_paused_cached(annotator) else last


def _undo_refusal(judgement: Judgement, continued: bool) -> str | None:
    if continued:  # its chosen answer is a turn of a longer conversation now (annotate.turns)
        return "this vote can no longer be undone: you continued its conversation"
    assignment = judgement.assignment
    if assignment is None or assignment.expires_at <= timezone.now():
        return "this vote can no longer be undone: its lease has run out"
    if TrainingRound.objects.filter(last_judgement_id__gte=judgement.pk).exists():
        return "this vote can no longer be undone: a training round has read it"
    return None


def judgement_undo(*, annotator: User, judgement_id: int) -> Assignment:
    """Take back the annotator's last vote while its lease runs and before any round read it; the pair is theirs
    to judge again (its lease is current again) and its place goes from the vote count back to the lease.

    Conflict when the vote is not their last one (someone else's, undone already, an older one) or can no longer be
    undone. What it said is kept in UndoneJudgement, whose key refuses a late resend of the vote."""
    now = timezone.now()
    with transaction.atomic():
        last = (
            Judgement.objects.select_for_update()
            .filter(annotator=annotator, source=Judgement.Source.HUMAN)
            .order_by("-id")
            .first()
        )
        if last is None or last.pk != judgement_id or last.assignment_id is None:
            raise Conflict("only your last vote can be undone, once")
        refusal = _undo_refusal(last, Continuation.objects.filter(judgement_id=last.pk).exists())
        if refusal is not None:
            raise Conflict(refusal)
        if annotator_is_paused(annotator):
            raise Conflict("your annotation work is paused: the vote stays as it is")
        assignment = last.assignment
        assert assignment is not None
        reopened = Assignment.objects.filter(pk=assignment.pk, status=Assignment.Status.JUDGED).update(
            status=Assignment.Status.LEASED, finished_at=None, leased_at=now
        )
        if reopened != 1:
            raise Conflict("this vote was undone meanwhile")
        UndoneJudgement.objects.create(
            pair_id=last.pair_id,
            annotator=annotator,
            idempotency_key=last.idempotency_key,
            choice=last.choice,
            strength=last.strength,
            rationale=last.rationale,
            judged_at=last.created_at,
            edit=HumanAnswer.objects.filter(judgement=last).values_list("text", flat=True).first() or "",
            ranking=last.ranking,
        )
        last.delete()  # its written answer (HumanAnswer) with it
        pairs = Pair.objects.filter(pk=last.pair_id, judgement_count__gt=0)
        if assignment.kind == Assignment.Kind.PAIR:
            pairs.update(judgement_count=F("judgement_count") - 1, lease_count=F("lease_count") + 1)
        elif assignment.kind == Assignment.Kind.GOLD:
            pairs.update(judgement_count=F("judgement_count") - 1)
    return Assignment.objects.select_related(*SELECTED).get(pk=assignment.pk)


def judgement_undone_last(*, assignment: Assignment) -> UndoneJudgement | None:
    """What the annotator said in the vote they undid to get this assignment back (the page offers it again).

    Only for the assignment the undo reopened (undo leases it anew just before keeping the vote): a later repeat of
    the pair must not show their earlier answer, or it would measure nothing."""
    return (
        UndoneJudgement.objects.filter(
            annotator_id=assignment.annotator_id, pair_id=assignment.pair_id, undone_at__gte=assignment.leased_at
        )
        .order_by("-id")
        .first()
    )


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
class CampaignProgress:
    """One campaign as its annotator sees it: votes they gave, pairs still open to them, the quota staff set."""

    campaign: Campaign
    done: int
    open_pairs: int
    quota: int | None

    @property
    def left(self) -> int:
        """Votes still asked of them: up to the quota when there is one, else every pair open to them."""
        if self.quota is None:
            return self.open_pairs
        return max(0, min(self.open_pairs, self.quota - self.done))

    @property
    def goal(self) -> int:
        return self.quota if self.quota is not None else self.done + self.open_pairs

    @property
    def quota_reached(self) -> bool:
        return self.quota is not None and self.done >= self.quota


@dataclass(frozen=True)
class Progress:
    today: int
    total: int
    campaigns: list[CampaignProgress]


def annotator_progress(*, annotator: User) -> Progress:
    start_of_day = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    counts = Judgement.objects.filter(annotator=annotator).aggregate(
        total=Count("id"), today=Count("id", filter=Q(created_at__gte=start_of_day))
    )
    done = _votes_by_campaign(annotator)
    open_campaigns = [campaign for campaign, _ in _campaigns_open(annotator)]
    open_pairs = Counter(
        dict(
            _open_pairs_for(annotator, open_campaigns)
            .values_list("campaign")
            .annotate(pairs=Count("id"))
            .values_list("campaign", "pairs")
        )
    )
    # The pair on their screen is no longer open to them, but it is still theirs to do.
    held = Assignment.objects.filter(
        annotator=annotator, status=Assignment.Status.LEASED, kind=Assignment.Kind.PAIR, expires_at__gt=timezone.now()
    )
    open_pairs.update(held.values_list("pair__campaign", flat=True))
    campaigns = [
        CampaignProgress(
            campaign=campaign,
            done=done.get(campaign.pk, 0),
            open_pairs=open_pairs.get(campaign.pk, 0),
            quota=campaign.quota_per_annotator,
        )
        for campaign in Campaign.objects.filter(Q(pk__in=list(done)) | Q(pk__in=list(open_pairs)))
    ]
    return Progress(today=counts["today"], total=counts["total"], campaigns=campaigns)


@dataclass(frozen=True)
class Wait:
    """Why no pair is on the annotator's screen, and about how long until one is (None: no estimate)."""

    reason: str
    seconds: int | None = None
    preparing: bool = False  # pairs are on their way (else none will come until staff or the annotator act)


def annotator_wait(*, annotator: User, progress: Progress) -> Wait:
    """Why this annotator has no pair, from what the database knows (no call to the model server on a page)."""
    # No campaign at all yet: the first pairs sampled make the default one.
    if Campaign.objects.exists() and not Campaign.objects.open_to(annotator).exists():
        return Wait("No campaign is open to you at the moment. Staff open campaigns; this page checks again.")
    if progress.campaigns and all(item.quota_reached for item in progress.campaigns if item.campaign.is_active):
        return Wait("You have given every vote asked of you in the campaigns open to you. Thank you!")
    serving = ModelVersion.objects.serving()
    if serving is None:
        return Wait("No model is serving yet, so no pairs can be written. Staff have been told on their dashboard.")
    estimate = _pair_seconds_estimate(serving)
    coming = SamplingClaim.objects.live(timezone.now()).aggregate(pairs=Sum("pairs"))["pairs"]
    if coming:
        plural = "s" if coming != 1 else ""
        return Wait(f"The model is writing {coming} new pair{plural} of answers.", estimate, preparing=True)
    return Wait("Every open pair has its votes. New pairs have been asked of the model.", estimate, preparing=True)


def _pair_seconds_estimate(version: ModelVersion) -> int | None:
    """About how long until the model has written a pair: the median time of its last answers (a pair's two answers
    are written at the same time, pairs side by side); None before it has written any."""
    latencies = sorted(
        latency
        for latency in Completion.objects.filter(model_version=version, latency_ms__isnull=False)
        .order_by("-id")
        .values_list("latency_ms", flat=True)[:PAIR_ESTIMATE_ANSWERS]
        if latency is not None
    )
    if not latencies:
        return None
    median_ms = latencies[len(latencies) // 2]
    return max(1, math.ceil(median_ms / 1000))
