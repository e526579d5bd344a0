"""The human canary gate: a trained candidate answers beside the serving version, annotators vote blind, and the
votes decide whether it serves.

A round in `human` (or `both`) gate mode ends its training in the canary status: the candidate is loaded into the
model server but does not serve. A share of new pairs (CANARY_PAIR_SHARE) put its answer beside its parent's to the
same prompt, and `canary_decide` runs a sequential test on the candidate's win rate (ties half) after every batch of
votes: Wald's SPRT of H0 "worse than its parent by more than CANARY_MARGIN" against H1 "a win rate of at least
CANARY_TARGET_WIN_RATE", with errors CANARY_ALPHA and CANARY_BETA (training.stats.WinRateTest says why this test).
It promotes or rejects as soon as the evidence reaches either bound, so a clear winner or loser is decided in a few
dozen votes and a modest improvement gets the votes it needs instead of a fixed 30. At CANARY_MAX_VOTES, or at
CANARY_MAX_MINUTES with at least CANARY_MIN_VOTES votes, an undecided test goes where its evidence leans; with fewer
votes at the time limit the candidate is rejected. Staff may decide earlier, with a reason. bench/canary_power.py
measures the rule's power and the votes it needs (docs/benchmarks.md).

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
from annotate.events import CANARY_DECIDED, webhook_events_emit
from annotate.models import Judgement, TrainingRound
from annotate.rounds.deploy import round_deploy_later
from annotate.sampling.generation import (
    ModelServerRefused,
    ModelServerUnavailable,
    client_from_settings,
)
from annotate.sampling.services import canary_round
from training.stats import WinRateTest, wilson_interval

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
    def score(self) -> float:
        """Wins, ties counting half."""
        return self.wins + self.ties / 2

    @property
    def win_rate(self) -> float | None:
        return self.score / self.votes if self.votes else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The win rate's Wilson 95 % interval at this look (training.stats), for the record; the rule does not use it
        (a fixed-size interval read after every vote would promote too often). None without votes."""
        return wilson_interval(self.wins + self.ties / 2, self.votes) if self.votes else None

    def as_dict(self) -> dict[str, Any]:
        low_high = self.interval
        return {
            **asdict(self),
            "votes": self.votes,
            "win_rate": self.win_rate,
            "low": low_high[0] if low_high else None,
            "high": low_high[1] if low_high else None,
            "evidence": canary_test().log_likelihood_ratio(self.score, self.votes),
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


def canary_test() -> WinRateTest:
    """The sequential test the settings describe."""
    return WinRateTest(
        null_win_rate=0.5 - settings.CANARY_MARGIN,
        target_win_rate=settings.CANARY_TARGET_WIN_RATE,
        alpha=settings.CANARY_ALPHA,
        beta=settings.CANARY_BETA,
        min_votes=settings.CANARY_MIN_VOTES,
        max_votes=settings.CANARY_MAX_VOTES,
    )


def decision_rule_text() -> str:
    test = canary_test()
    return (
        f"Once it has {test.min_votes} votes, a sequential test weighs the candidate's win rate (ties count half) "
        f"after every vote: it serves as soon as the evidence for a win rate of at least {test.target_win_rate:.2f} "
        f"reaches its bound, and is rejected as soon as the evidence for one of at most {test.null_win_rate:.2f} "
        f"(worse than its parent by more than the {settings.CANARY_MARGIN:.2f} margin) reaches its own; the bounds "
        f"are set for at most {test.alpha:.0%} wrong serves and {test.beta:.0%} wrong rejections. Undecided after "
        f"{test.max_votes} votes, or after {settings.CANARY_MAX_MINUTES:g} minutes with at least {test.min_votes}, it "
        f"serves if its win rate is above {test.midpoint:.3f}; with fewer votes by then it is rejected."
    )


def canary_rule(tally: Tally, *, waited: timedelta) -> tuple[str, str] | None:
    """The rule alone: (decision, reason), or None to keep waiting."""
    test = canary_test()
    evidence = test.log_likelihood_ratio(tally.score, tally.votes)
    rate = f"win rate {tally.win_rate or 0:.3f} over {tally.votes} votes"
    if tally.votes >= test.min_votes and evidence >= test.upper:
        return PROMOTE, (
            f"{rate}: the evidence for a win rate of at least {test.target_win_rate:.3f} reached its bound "
            f"(log-likelihood ratio {evidence:.2f} \u2265 {test.upper:.2f})"
        )
    if tally.votes >= test.min_votes and evidence <= test.lower:
        return REJECT, (
            f"{rate}: the evidence for a win rate of at most {test.null_win_rate:.3f} reached its bound "
            f"(log-likelihood ratio {evidence:.2f} \u2264 {test.lower:.2f})"
        )
    if tally.votes >= test.max_votes:
        stop = f"{test.max_votes} votes, the most the test takes, without a decision"
    elif waited >= timedelta(minutes=settings.CANARY_MAX_MINUTES):
        if tally.votes < test.min_votes:
            return REJECT, f"{NOT_ENOUGH_VOTES}: {tally.votes} of {test.min_votes} in the time limit"
        stop = "the time limit without a decision"
    else:
        return None
    if test.lean(tally.score, tally.votes):
        return PROMOTE, f"{stop}; {rate} is above {test.midpoint:.3f}"
    return REJECT, f"{stop}; {rate} is not above {test.midpoint:.3f}"


def canary_outlook(tally: Tally) -> tuple[float, float]:
    """(chance the test ends serving the candidate, votes it expects to still need), if further votes split like those
    so far. One pseudo-vote of each kind keeps the first votes from looking certain (three wins in three votes do not
    make a sure winner)."""
    win_share, tie_share = (tally.wins + 1) / (tally.votes + 3), (tally.ties + 1) / (tally.votes + 3)
    return canary_test().outlook(win_share=win_share, tie_share=tie_share, score=tally.score, votes=tally.votes)


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
        "max_votes": settings.CANARY_MAX_VOTES,
        "bounds": (canary_test().lower, canary_test().upper),
        "votes_expected": canary_outlook(tally)[1] if training_round.status == Status.CANARY else None,
        "deadline": deadline,
        "rule": decision_rule_text(),
        "decision": training_round.canary_decision,
    }
