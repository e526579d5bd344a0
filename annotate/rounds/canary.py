"""The human canary gate: a trained candidate answers beside the serving version, annotators vote blind, and the
votes decide whether it serves.

A round in `human` (or `both`) gate mode ends its training in the canary status: the candidate is loaded into the
model server but does not serve. A share of new pairs (CANARY_PAIR_SHARE) put its answer beside its parent's to the
same prompt; once CANARY_MIN_VOTES votes on those pairs are in, `canary_decide` promotes the candidate when the lower
end of its win rate's Wilson 95 % interval reaches CANARY_MIN_WIN_RATE, and rejects it otherwise. A canary that does
not get enough votes within CANARY_MAX_MINUTES is rejected; staff may decide earlier, with a reason.

While no canary runs, HEAD_TO_HEAD_PAIR_SHARE of new pairs put the serving version against an earlier one (the one
with the fewest head-to-head votes against it), so every version keeps getting compared on the leaderboard.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from annotate.broker import enqueue
from annotate.errors import Conflict, Invalid
from annotate.generation import (
    ModelServerClient,
    ModelServerRefused,
    ModelServerUnavailable,
    Sample,
    SamplingParams,
    client_from_settings,
)
from annotate.models import Judgement, ModelVersion, Pair, Prompt, TrainingRound
from annotate.sampling import _completion_create, _new_seed, _prompts_samplable

logger = logging.getLogger(__name__)

Status = TrainingRound.Status
PROMOTE, REJECT = "promote", "reject"
NOT_ENOUGH_VOTES = "not enough votes"
Z_95 = NormalDist().inv_cdf(0.975)
_random = random.SystemRandom()


# --- Head-to-head pairs ------------------------------------------------------------------------------------------


def pairs_sample_head_to_head(
    *,
    first: ModelVersion,
    second: ModelVersion,
    prompts: list[Prompt],
    client: ModelServerClient,
    sampled_from: ModelVersion | None = None,
) -> list[Pair]:
    """One answer per version to each prompt, with the same sampling settings and each its own seed, stored as one
    pair whose A side is drawn at random. `sampled_from` is the serving version (the default), which the pair
    buffer counts it against; each answer's own version is on its completion."""
    owner = sampled_from or ModelVersion.objects.serving() or first

    def sample(version: ModelVersion, prompt: Prompt) -> Sample:
        return client.chat(
            model=version.name, messages=prompt.messages, params=SamplingParams.from_settings(_new_seed())
        )

    workers = max(1, settings.PAIR_GENERATION_CONCURRENCY * 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="head-to-head") as pool:
        futures = [
            (prompt, pool.submit(sample, first, prompt), pool.submit(sample, second, prompt)) for prompt in prompts
        ]
        results = []
        for prompt, a, b in futures:
            try:
                results.append((prompt, a.result(), b.result()))
            except ModelServerRefused as error:  # this prompt only (too long, ...): the others still make pairs
                logger.warning("prompt %s: the model server refused a head-to-head answer: %s", prompt.pk, error)
    pairs = []
    for prompt, first_sample, second_sample in results:
        if first_sample.text.strip() == second_sample.text.strip():
            logger.info("prompt %s: %s and %s gave the same answer; no pair", prompt.pk, first, second)
            continue
        answers = [(first, first_sample), (second, second_sample)]
        if secrets.randbelow(2):  # which version is A is random, so A carries no meaning a vote could pick up
            answers.reverse()
        with transaction.atomic():
            completions = [_completion_create(prompt, version, sample) for version, sample in answers]
            pairs.append(
                Pair.objects.create(
                    prompt=prompt,
                    completion_a=completions[0],
                    completion_b=completions[1],
                    sampled_from=owner,  # votes needed: the campaign's, as for any new pair (Pair.save)
                )
            )
    return pairs


def canary_round() -> TrainingRound | None:
    """The round whose candidate waits for head-to-head votes, if any (at most one round is active)."""
    return (
        TrainingRound.objects.select_related("result_version", "parent_version")
        .filter(status=Status.CANARY, active=True)
        .first()
    )


def head_to_head_pairs_wanted(missing: int) -> tuple[TrainingRound | None, int]:
    """Of `missing` new pairs, how many are head-to-head, and for which canary (None: the serving version against an
    earlier one).

    While a canary runs it takes CANARY_PAIR_SHARE, rounded up so it gets its votes soon. Otherwise
    HEAD_TO_HEAD_PAIR_SHARE, rounded to a whole pair at random: refills are often small, and rounding up would make
    one pair in each of them head-to-head, far above the share."""
    if missing <= 0:
        return None, 0
    training_round = canary_round()
    if training_round is not None and training_round.result_version is not None:
        return training_round, min(missing, math.ceil(missing * settings.CANARY_PAIR_SHARE))
    exact = missing * settings.HEAD_TO_HEAD_PAIR_SHARE
    return None, min(missing, math.floor(exact) + (_random.random() < exact - math.floor(exact)))


def _prompts_least_compared(version: ModelVersion, count: int) -> list[Prompt]:
    return list(
        _prompts_samplable()
        .annotate(answers=Count("completions", filter=Q(completions__model_version=version)))
        .order_by("answers", "?")[:count]
    )


def head_to_head_pairs_refill(*, client: ModelServerClient, missing: int) -> int:
    """Make the head-to-head share of `missing` new pairs (head_to_head_pairs_wanted); returns how many were made.

    The refill calls this before sampling its own pairs and samples `missing` less what this made. A model server
    that refuses or cannot be reached costs only these pairs: the refill samples ordinary ones instead."""
    training_round, count = head_to_head_pairs_wanted(missing)
    if count == 0:
        return 0
    try:
        if training_round is not None:
            return _canary_pairs_make(training_round, count, client)
        return _earlier_pairs_make(count, client)
    except (ModelServerRefused, ModelServerUnavailable) as error:
        logger.warning("no head-to-head pairs this refill, ordinary pairs instead: %s", error)
        return 0


def _canary_pairs_make(training_round: TrainingRound, count: int, client: ModelServerClient) -> int:
    candidate = training_round.result_version
    assert candidate is not None  # head_to_head_pairs_wanted checked it
    candidate.ensure_loaded(client)  # a restarted model server forgets it; the canary needs it back
    training_round.parent_version.ensure_loaded(client)
    prompts = _prompts_least_compared(candidate, count)
    made = pairs_sample_head_to_head(
        first=candidate, second=training_round.parent_version, prompts=prompts, client=client
    )
    logger.info("round %s canary: made %d head-to-head pairs", training_round.pk, len(made))
    return len(made)


def head_to_head_opponents(serving: ModelVersion) -> list[ModelVersion]:
    """The earlier versions the serving one is compared with, in the order they are tried: fewest head-to-head votes
    asked for against the serving version first (pairs still waiting for theirs count, so one refill's choice is
    not repeated before the votes are in), then the newest.

    Every version that served before is one, the base model included. Rejected candidates are not: their canary
    compared them already, and they never serve, so more votes on them would not change what users get."""
    earlier = list(ModelVersion.objects.filter(status=ModelVersion.Status.RETIRED).exclude(pk=serving.pk))
    pairs = Pair.objects.filter(
        Q(completion_a__model_version=serving, completion_b__model_version__in=earlier)
        | Q(completion_b__model_version=serving, completion_a__model_version__in=earlier)
    )
    asked: Counter[int] = Counter()
    for a_version, b_version, votes in (
        pairs.values_list("completion_a__model_version_id", "completion_b__model_version_id")
        .annotate(votes=Sum("judgements_required"))
        .order_by()
    ):
        asked[b_version if a_version == serving.pk else a_version] += votes
    return sorted(earlier, key=lambda version: (asked[version.pk], -version.pk))


def _earlier_pairs_make(count: int, client: ModelServerClient) -> int:
    serving = ModelVersion.objects.serving()
    if serving is None:
        return 0
    for opponent in head_to_head_opponents(serving):
        try:
            if not opponent.ensure_loaded(client, only_with_room=True):
                logger.info("%s: no free adapter slot to compare it in", opponent)
                continue
        except ModelServerRefused as error:  # its adapter is gone or broken: the next version may still load
            logger.warning("%s could not be loaded to compare it with %s: %s", opponent, serving, error)
            continue
        made = pairs_sample_head_to_head(
            first=serving, second=opponent, prompts=_prompts_least_compared(opponent, count), client=client
        )
        logger.info("made %d head-to-head pairs: %s against %s", len(made), serving, opponent)
        return len(made)
    return 0


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
        return wilson_interval(self.wins + self.ties / 2, self.votes)

    def as_dict(self) -> dict[str, Any]:
        low_high = self.interval
        return {
            **asdict(self),
            "votes": self.votes,
            "win_rate": self.win_rate,
            "low": low_high[0] if low_high else None,
            "high": low_high[1] if low_high else None,
        }


def wilson_interval(successes: float, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval for a proportion (95 % by default); None without trials.

    Wilson rather than the normal approximation because canaries are small (tens of votes) and a good candidate's
    win rate may sit near 1, where the normal interval is too narrow and can leave [0, 1]; Wilson keeps close to its
    stated coverage there. Ties count half a win, so `successes` may be fractional."""
    if trials <= 0:
        return None
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    spread = z / denominator * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - spread), min(1.0, centre + spread)


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
    from annotate.sampling import pairs_refill_request

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
    from annotate.tasks import round_deploy

    if not enqueue(round_deploy, training_round.pk):
        training_round.finish(Status.TRAINED, error="the task queue could not be reached; promote it again")


def _apply(training_round: TrainingRound, decision: str, reason: str, by: str, tally: Tally) -> None:
    record = {"decision": decision, "reason": reason, "by": by, "at": timezone.now().isoformat(), **tally.as_dict()}
    logger.info("round %s canary: %s (%s, by %s)", training_round.pk, decision, reason, by)
    (_promote if decision == PROMOTE else _reject)(training_round, record)


def canary_decide(training_round: TrainingRound, *, now: datetime | None = None) -> str | None:
    """Apply the rule to one canary round: promote, reject, or keep waiting (a heartbeat, so it never looks stale).
    Returns the decision taken, if any."""
    if training_round.status != Status.CANARY:
        return None
    now = now or timezone.now()
    tally = canary_tally(training_round)
    decision = canary_rule(tally, waited=now - (training_round.canary_started_at or now))
    if decision is None:
        training_round.record()
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
