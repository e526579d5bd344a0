"""The human canary gate: a trained candidate answers beside the serving version, annotators vote blind, and the
votes decide whether it serves.

A round in `human` (or `both`) gate mode ends its training in the canary status: the candidate is loaded into the
model server but does not serve. A share of new pairs (CANARY_PAIR_SHARE) put its answer beside its parent's to the
same prompt; once CANARY_MIN_VOTES votes on those pairs are in, `canary_decide` promotes the candidate when the lower
end of its win rate's Wilson 95 % interval reaches CANARY_MIN_WIN_RATE, and rejects it otherwise. A canary that does
not get enough votes within CANARY_MAX_MINUTES is rejected; staff may decide earlier, with a reason.

The head-to-head pairs themselves come from the one pair maker, annotate.sampling.services; this module keeps the
tally, the rule and the decision.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotate.errors import Conflict, Invalid
from annotate.hooks.events import CANARY_DECIDED, webhook_events_emit
from annotate.models import Judgement, TrainingRound
from annotate.rounds.deploy import round_deploy_later
from annotate.sampling.generation import (
    ModelServerRefused,
    ModelServerUnavailable,
    client_from_settings,
)
from annotate.sampling.services import canary_round
from training.stats import wilson_interval

logger = logging.getLogger(__name__)

Status = TrainingRound.Status
PROMOTE, REJECT = "promote", "reject"
NOT_ENOUGH_VOTES = "not enough votes"


# --- The tally and the rule --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """Head-to-head votes between a candidate and its parent, from the candidate's side."""

    wins: int
    ties: int
    losses: int

    @property
    def votes(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_rate(self) -> float | None:
        return (self.wins + self.ties / 2) / self.votes if self.votes else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The win rate's Wilson 95 % interval (training.stats); None without votes."""
        return wilson_interval(self.wins + self.ties / 2, self.votes) if self.votes else None

    def as_dict(self) -> dict[str, Any]:
        low_high = self.interval
        return {
            **asdict(self),
            "votes": self.votes,
            "win_rate": self.win_rate,
            "low": low_high[0] if low_high else None,
            "high": low_high[1] if low_high else None,
        }


def canary_tally(training_round: TrainingRound) -> Tally:
    """Votes on pairs that put the round's candidate against its parent. Ties and both-bad count half a win each
    (neither answer was preferred); repeated votes (an annotator shown a pair again to check consistency) are left
    out so nobody's vote counts twice."""
    candidate, parent = training_round.result_version_id, training_round.parent_version_id
    if candidate is None:
        return Tally(0, 0, 0)
    votes = Judgement.objects.filter(is_repeat=False).filter(
        Q(pair__completion_a__model_version_id=candidate, pair__completion_b__model_version_id=parent)
        | Q(pair__completion_a__model_version_id=parent, pair__completion_b__model_version_id=candidate)
    )
    wins = ties = losses = 0
    for choice, a_version in votes.values_list("choice", "pair__completion_a__model_version_id"):
        if choice in (Judgement.Choice.TIE, Judgement.Choice.BOTH_BAD):
            ties += 1
        elif (choice == Judgement.Choice.A) == (a_version == candidate):
            wins += 1
        else:
            losses += 1
    return Tally(wins, ties, losses)


def decision_rule_text() -> str:
    return (
        f"After {settings.CANARY_MIN_VOTES} head-to-head votes, the candidate serves if the lower end of its win "
        f"rate's Wilson 95 % interval (ties count half) is at least {settings.CANARY_MIN_WIN_RATE:.2f}; otherwise it "
        f"is rejected. Without enough votes after {settings.CANARY_MAX_MINUTES:g} minutes it is rejected."
    )


def canary_rule(tally: Tally, *, waited: timedelta) -> tuple[str, str] | None:
    """The rule alone: (decision, reason), or None to keep waiting."""
    if tally.votes >= settings.CANARY_MIN_VOTES:
        low = (tally.interval or (0.0, 0.0))[0]
        rate = f"win rate {tally.win_rate:.3f}, 95 % lower bound {low:.3f}"
        if low >= settings.CANARY_MIN_WIN_RATE:
            return PROMOTE, f"{rate} reaches {settings.CANARY_MIN_WIN_RATE:.3f} over {tally.votes} votes"
        return REJECT, f"{rate} is below {settings.CANARY_MIN_WIN_RATE:.3f} over {tally.votes} votes"
    if waited >= timedelta(minutes=settings.CANARY_MAX_MINUTES):
        return REJECT, f"{NOT_ENOUGH_VOTES}: {tally.votes} of {settings.CANARY_MIN_VOTES} in the time limit"
    return None


# --- Deciding -----------------------------------------------------------------------------------------------------


def canary_begin(training_round: TrainingRound) -> None:
    """An evaluated round becomes a canary: its candidate is loaded beside the serving version, which keeps serving.

    A model server that refuses the adapter fails the round; one that cannot be reached leaves the loading to the
    next refill (which loads the candidate before sampling its pairs)."""
    version = training_round.result_version
    if version is None:
        training_round.finish(Status.FAILED, error="the round produced no adapter to compare")
        return
    training_round.advance(Status.CANARY, canary_started_at=timezone.now())
    try:
        with client_from_settings() as client:
            version.ensure_loaded(client)
    except ModelServerUnavailable as error:
        logger.warning("round %s canary: candidate not loaded yet: %s", training_round.pk, error)
    except ModelServerRefused as error:
        with transaction.atomic():
            version.reject()
            training_round.finish(Status.FAILED, error=f"the model server refused the adapter: {error}")
        return
    from annotate.sampling.services import pairs_refill_request

    pairs_refill_request(throttle=False)


def _reject(training_round: TrainingRound, record: dict[str, Any]) -> None:
    version = training_round.result_version
    assert version is not None
    with transaction.atomic():
        training_round.finish(Status.REJECTED, error="", canary_decision=record)
        version.reject()
    try:
        with client_from_settings() as client:
            version.unload(client)
    except (ModelServerUnavailable, ModelServerRefused) as error:
        # The rejected adapter only takes a slot; vLLM forgets it at its next restart.
        logger.warning("round %s: rejected candidate not unloaded: %s", training_round.pk, error)


def _promote(training_round: TrainingRound, record: dict[str, Any]) -> None:
    with transaction.atomic():
        training_round.deploy_begin()
        training_round.record(canary_decision=record)
    round_deploy_later(training_round)


def _apply(training_round: TrainingRound, decision: str, reason: str, by: str, tally: Tally) -> None:
    record = {"decision": decision, "reason": reason, "by": by, "at": timezone.now().isoformat(), **tally.as_dict()}
    logger.info("round %s canary: %s (%s, by %s)", training_round.pk, decision, reason, by)
    (_promote if decision == PROMOTE else _reject)(training_round, record)
    webhook_events_emit(event=CANARY_DECIDED, payload={"round": training_round.pk, **record})


def canary_decide(training_round: TrainingRound, *, now: datetime | None = None) -> str | None:
    """Apply the rule to one canary round: promote, reject, or keep waiting (a heartbeat, so it never looks stale).
    Returns the decision taken, if any."""
    if training_round.status != Status.CANARY:
        return None
    now = now or timezone.now()
    tally = canary_tally(training_round)
    decision = canary_rule(tally, waited=now - (training_round.canary_started_at or now))
    if decision is None:
        training_round.heartbeat()
        return None
    _apply(training_round, decision[0], decision[1], "the rule", tally)
    return decision[0]


def canaries_decide(*, now: datetime | None = None) -> str | None:
    """The periodic task's work: decide the running canary, if there is one."""
    training_round = canary_round()
    if training_round is None:
        return None
    try:
        return canary_decide(training_round, now=now)
    except Conflict as error:  # decided early by staff meanwhile
        logger.info("round %s canary: %s", training_round.pk, error)
        return None


def canary_decide_early(*, training_round: TrainingRound, by: User | None, decision: str, reason: str) -> None:
    """Staff end a canary before the rule does. Invalid without a reason or with an unknown decision; Conflict when
    the round is not a canary (any more)."""
    reason = reason.strip()
    errors = {}
    if decision not in (PROMOTE, REJECT):
        errors["decision"] = f"must be {PROMOTE} or {REJECT}"
    if not reason:
        errors["reason"] = "deciding a canary early needs a reason"
    if errors:
        raise Invalid(errors)
    if training_round.status != Status.CANARY:
        state = training_round.get_status_display().lower()
        raise Conflict(f"round {training_round.pk} is {state}; there is no canary to decide")
    who = by.get_username() if by else "unknown"
    _apply(training_round, decision, f"decided early: {reason}", who, canary_tally(training_round))


def canary_summary(training_round: TrainingRound) -> dict[str, Any] | None:
    """What the round page shows of a canary (live while it waits, the decision after); None for a round that had
    none."""
    if training_round.canary_started_at is None:
        return None
    tally = canary_tally(training_round)
    deadline = training_round.canary_started_at + timedelta(minutes=settings.CANARY_MAX_MINUTES)
    return {
        **tally.as_dict(),
        "waiting": training_round.status == Status.CANARY,
        "min_votes": settings.CANARY_MIN_VOTES,
        "min_win_rate": settings.CANARY_MIN_WIN_RATE,
        "deadline": deadline,
        "rule": decision_rule_text(),
        "decision": training_round.canary_decision,
    }
