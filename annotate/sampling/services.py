"""Sampling pairs from the model server into the buffer of pairs ready to be judged: the one maker of pairs.

Most pairs are two answers of the serving version. A share are head-to-head: a canary's candidate against its parent
(CANARY_PAIR_SHARE, while a canary runs; annotate.rounds.canary tallies their votes and decides), or the serving
version against an earlier one (HEAD_TO_HEAD_PAIR_SHARE), so every version keeps getting compared on the leaderboard.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet, Sum
from django.utils import timezone

from annotate.broker import enqueue
from annotate.cache import cache_is_database
from annotate.models import (
    Campaign,
    Completion,
    ModelVersion,
    Pair,
    PairExtraAnswer,
    Prompt,
    SamplingClaim,
    TrainingRound,
)
from annotate.owners import heartbeat, holder_is_dead, holder_name
from annotate.sampling.generation import (
    ModelServerPool,
    ModelServerRefused,
    ModelServerUnavailable,
    Sample,
    SamplingParams,
    client_from_settings,
    messages_with_system_prompt,
    model_server_urls,
)

logger = logging.getLogger(__name__)
_random = random.SystemRandom()


def pairs_ready_count(version: ModelVersion | None = None) -> int:
    """Pairs that still need votes, from `version` or from any version."""
    pairs = Pair.objects.needing_judgements()
    if version is not None:
        pairs = pairs.filter(sampled_from=version)
    return pairs.count()


def prompts_set_aside() -> QuerySet[Prompt]:
    """Prompts no longer sampled because the model server refused them PROMPT_MAX_REFUSALS times, latest first.

    Staff fix or deactivate them; setting `refusal_count` back to 0 lets one be sampled again.
    """
    if settings.PROMPT_MAX_REFUSALS <= 0:
        return Prompt.objects.none()
    return Prompt.objects.filter(refusal_count__gte=settings.PROMPT_MAX_REFUSALS).order_by("-last_refused_at", "id")


def _prompts_samplable() -> QuerySet[Prompt]:
    prompts = Prompt.objects.filter(is_active=True)
    if settings.PROMPT_MAX_REFUSALS > 0:
        prompts = prompts.filter(refusal_count__lt=settings.PROMPT_MAX_REFUSALS)
    return prompts


def _prompts_least_sampled(version: ModelVersion, count: int) -> list[Prompt]:
    # Spread pairs over prompts: those with the fewest pairs from this version first, then those the server refused
    # least, ties in random order.
    return list(
        _prompts_samplable()
        .annotate(pair_total=Count("pairs", filter=Q(pairs__sampled_from=version)))
        .order_by("pair_total", "refusal_count", "?")[:count]
    )


def prompt_refusal_record(*, prompt: Prompt, reason: str) -> None:
    """Count one refusal of `prompt` by the model server; at PROMPT_MAX_REFUSALS it is set aside."""
    Prompt.objects.filter(pk=prompt.pk).update(
        refusal_count=F("refusal_count") + 1, last_refusal=reason[:2000], last_refused_at=timezone.now()
    )
    prompt.refresh_from_db(fields=["refusal_count", "last_refusal", "last_refused_at"])
    limit = settings.PROMPT_MAX_REFUSALS
    if limit > 0 and prompt.refusal_count >= limit:
        logger.warning("prompt %s set aside after %d refusals by the model server: %s", prompt.pk, limit, reason)
    else:
        logger.warning(
            "the model server refused prompt %s (%d times so far): %s", prompt.pk, prompt.refusal_count, reason
        )


def _new_seed() -> int:
    return secrets.randbits(31)


@dataclass(frozen=True)
class AnswerRecipe:
    """How one side of a pair is sampled, as its campaign says: the version, the system prompt and the settings
    (None: the deployment's SAMPLING_* default)."""

    version: ModelVersion
    system_prompt: str = ""
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None

    def sample(self, client: ModelServerPool, prompt: Prompt) -> Sample:
        """One answer with a fresh seed. Its `sampling` (the completion's lineage) is what was sent, and the system
        prompt when the campaign's was sent."""
        messages, params = self._request(prompt)
        return self._recorded(client.chat(model=self.version.name, messages=messages, params=params), messages, prompt)

    def sample_streamed(self, client: ModelServerPool, prompt: Prompt, on_text: Callable[[str], bool]) -> Sample:
        """As `sample`, with each piece of the answer handed to `on_text` as the server writes it (annotate.turns)."""
        messages, params = self._request(prompt)
        sample = client.chat_stream(model=self.version.name, messages=messages, params=params, on_text=on_text)
        return self._recorded(sample, messages, prompt)

    def _request(self, prompt: Prompt) -> tuple[list[dict[str, Any]], SamplingParams]:
        params = SamplingParams.from_settings(
            _new_seed(), temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens
        )
        return messages_with_system_prompt(prompt.messages, self.system_prompt), params

    def _recorded(self, sample: Sample, messages: list[dict[str, Any]], prompt: Prompt) -> Sample:
        if messages is prompt.messages:
            return sample
        return replace(sample, sampling={**sample.sampling, "system_prompt": self.system_prompt})


def campaign_recipes(campaign: Campaign | None, serving: ModelVersion) -> tuple[AnswerRecipe, AnswerRecipe]:
    """The two sides of a new pair of `campaign` (None: a prompt set with no campaign yet, the defaults): the serving
    version twice, the serving version against the campaign's opponent, or the serving version with the campaign's
    settings and with its second settings."""
    if campaign is None:
        return AnswerRecipe(serving), AnswerRecipe(serving)
    first = AnswerRecipe(
        serving,
        system_prompt=campaign.system_prompt,
        temperature=campaign.temperature,
        top_p=campaign.top_p,
        # A cap lowered since the campaign was saved still holds: its answers are not longer than the cap allows.
        max_tokens=None if campaign.max_tokens is None else min(campaign.max_tokens, settings.SAMPLING_MAX_TOKENS_CAP),
    )
    if campaign.sides == Campaign.Sides.VERSION and campaign.opponent_version is not None:
        return first, replace(first, version=campaign.opponent_version)
    if campaign.sides == Campaign.Sides.SETTINGS:
        second = replace(
            first,
            temperature=first.temperature if campaign.second_temperature is None else campaign.second_temperature,
            top_p=first.top_p if campaign.second_top_p is None else campaign.second_top_p,
        )
        return first, second
    return first, first


def recipes_for_answers(sides: tuple[AnswerRecipe, AnswerRecipe], count: int) -> tuple[AnswerRecipe, ...]:
    """The recipes of a pair's `count` answers: its two sides, then (a ranking pair) the sides again in turn, so that
    when the sides differ each is ranked against the other and against itself."""
    return tuple(sides[index % 2] for index in range(count))


def _campaigns_of(prompts: list[Prompt]) -> dict[str, Campaign]:
    names = {prompt.prompt_set for prompt in prompts}
    return {
        campaign.name: campaign
        for campaign in Campaign.objects.filter(name__in=names).select_related("opponent_version")
    }


def _completion_create(prompt: Prompt, version: ModelVersion, sample: Sample) -> Completion:
    return Completion.objects.create(
        prompt=prompt,
        model_version=version,
        text=sample.text,
        sampling=sample.sampling,
        seed=sample.sampling["seed"],
        finish_reason=sample.finish_reason,
        prompt_tokens=sample.prompt_tokens,
        completion_tokens=sample.completion_tokens,
        latency_ms=sample.latency_ms,
        response_id=sample.response_id,
        server=sample.server,
    )


def pair_create(
    *,
    prompt: Prompt,
    version: ModelVersion,
    first: Sample,
    second: Sample,
    first_version: ModelVersion | None = None,
    second_version: ModelVersion | None = None,
    extra: Sequence[tuple[ModelVersion, Sample]] = (),
) -> Pair | None:
    """Store two answers as a pair sampled while `version` served, unless two are the same text (nothing to
    compare). Each answer is `version`'s unless its own version is given (a campaign comparing two versions).
    `extra`: a ranking pair's further answers (positions 2, 3), each with the version that wrote it."""
    texts = [first.text.strip(), second.text.strip(), *(sample.text.strip() for _, sample in extra)]
    if len(set(texts)) < len(texts):
        logger.info("prompt %s: version %s gave identical answers; not making a pair", prompt.pk, version)
        return None
    with transaction.atomic():
        pair = Pair.objects.create(
            prompt=prompt,
            completion_a=_completion_create(prompt, first_version or version, first),
            completion_b=_completion_create(prompt, second_version or version, second),
            sampled_from=version,
            answer_count=2 + len(extra),
        )
        for position, (answer_version, sample) in enumerate(extra, start=2):
            PairExtraAnswer.objects.create(
                pair=pair, position=position, completion=_completion_create(prompt, answer_version, sample)
            )
        return pair


@dataclass
class _PromptInFlight:
    prompt: Prompt
    recipes: tuple[AnswerRecipe, ...]
    answers: dict[int, Sample] = field(default_factory=dict)  # by side: 0 and 1 (and 2, 3 for a ranking pair)
    outstanding: int = 0

    def __post_init__(self) -> None:
        self.outstanding = len(self.recipes)

    refusal: ModelServerRefused | None = None
    unavailable: bool = False


def pairs_sample(
    *, version: ModelVersion, prompts: list[Prompt], client: ModelServerPool, wanted: int | None = None
) -> list[Pair]:
    """Sample two seeded answers per prompt, as its campaign says (campaign_recipes), and store each pair as soon as
    both of its answers are in.

    PAIR_GENERATION_CONCURRENCY prompts (two requests each) are in flight together so the server batches them.
    Stops at `wanted` pairs (default: one per prompt); a prompt the server refuses, or whose twin answers are the
    same, is replaced by the next one in `prompts`, so one bad prompt never costs the batch. A refusal that blames the
    prompt is recorded on it (see prompt_refusal_record); a failed request (timeout, 5xx) costs only its own pair.

    Raises ModelServerUnavailable when nothing could be stored because the server could not be reached, and
    ModelServerRefused when nothing could be stored because it refused the caller or the model (401, 403, 404).
    """
    wanted = len(prompts) if wanted is None else wanted
    recipes = _recipes_by_prompt_set(version, prompts, client)
    waiting = deque(prompt for prompt in prompts if prompt.prompt_set in recipes)
    concurrency = max(1, settings.PAIR_GENERATION_CONCURRENCY)
    stored: list[Pair] = []
    slots_used = 0  # a stored pair or a failed request uses a slot; a refused prompt or identical twins free theirs
    in_flight: dict[Future[Sample], tuple[_PromptInFlight, int]] = {}
    prompts_in_flight = 0
    unavailable: list[ModelServerUnavailable] = []
    blocking_refusals: list[ModelServerRefused] = []

    with ThreadPoolExecutor(max_workers=concurrency * 2, thread_name_prefix="sample") as pool:

        def submit_more() -> None:
            nonlocal prompts_in_flight
            while waiting and prompts_in_flight < concurrency and slots_used + prompts_in_flight < wanted:
                prompt = waiting.popleft()
                entry = _PromptInFlight(prompt, recipes[prompt.prompt_set])
                for side, recipe in enumerate(entry.recipes):
                    in_flight[pool.submit(recipe.sample, client, prompt)] = (entry, side)
                prompts_in_flight += 1

        submit_more()
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                entry, side = in_flight.pop(future)
                entry.outstanding -= 1
                try:
                    entry.answers[side] = future.result()
                except ModelServerRefused as error:
                    entry.refusal = entry.refusal or error
                except ModelServerUnavailable as error:
                    entry.unavailable = True
                    unavailable.append(error)
                if entry.outstanding:
                    continue
                prompts_in_flight -= 1
                pair = _prompt_finished(entry, version, blocking_refusals)
                if pair is not None:
                    stored.append(pair)
                    slots_used += 1
                elif entry.unavailable or (entry.refusal and not entry.refusal.blames_the_request_body):
                    slots_used += 1
            if not stored and len(unavailable) >= 2 * concurrency:
                waiting.clear()  # a whole wave failed and none worked: the server is down, stop asking it
            submit_more()

    if not stored and blocking_refusals:
        raise blocking_refusals[0]
    if not stored and unavailable:
        raise unavailable[0]
    if unavailable or blocking_refusals:
        logger.warning(
            "stored %d pairs from %s; %d requests failed (%s)",
            len(stored),
            version,
            len(unavailable) + len(blocking_refusals),
            (unavailable or blocking_refusals)[0],
        )
    return stored


def _prompt_finished(
    entry: _PromptInFlight, version: ModelVersion, blocking_refusals: list[ModelServerRefused]
) -> Pair | None:
    if entry.refusal is not None:
        if entry.refusal.blames_the_request_body:
            prompt_refusal_record(prompt=entry.prompt, reason=str(entry.refusal))
        else:
            blocking_refusals.append(entry.refusal)
        return None
    if len(entry.answers) < len(entry.recipes):
        return None  # one request failed; logged once for the batch
    sides = [(recipe.version, entry.answers[side]) for side, recipe in enumerate(entry.recipes)]
    if len(set(entry.recipes)) > 1:
        # Which answer is A (B, ...) is random when they differ, so a position carries no meaning a vote could pick up.
        secrets.SystemRandom().shuffle(sides)
    (first_version, first), (second_version, second), *extra = sides
    return pair_create(
        prompt=entry.prompt,
        version=version,
        first=first,
        second=second,
        first_version=first_version,
        second_version=second_version,
        extra=extra,
    )


def _recipes_by_prompt_set(
    version: ModelVersion, prompts: list[Prompt], client: ModelServerPool
) -> dict[str, tuple[AnswerRecipe, ...]]:
    """Each prompt set's two sides (campaign_recipes). A campaign whose opponent version cannot be loaded samples no
    pairs this time (logged): it asked for that comparison, and the other campaigns' prompts still fill the batch."""
    campaigns = _campaigns_of(prompts)
    recipes = {}
    for name in {prompt.prompt_set for prompt in prompts}:
        sides = campaign_recipes(campaigns.get(name), version)
        try:
            for opponent in {recipe.version for recipe in sides} - {version}:
                opponent.ensure_loaded(client)
        except (ModelServerRefused, ModelServerUnavailable) as error:
            logger.warning("campaign %s: its opponent version could not be loaded, no pairs this time: %s", name, error)
            continue
        campaign = campaigns.get(name)
        recipes[name] = recipes_for_answers(sides, campaign.answers_per_pair if campaign else 2)
    return recipes


# --- Refills: the buffer shared out in claimed batches ------------------------------------------------------------


def _claims_take_over(version: ModelVersion, now: datetime) -> None:
    """End the claims whose holders are gone (expired, or a process of this host that died), saying so."""
    for claim in SamplingClaim.objects.filter(version=version):
        if claim.expires_at <= now:
            reason = f"its lease ran out at {claim.expires_at:%H:%M:%S} without a heartbeat"
        elif holder_is_dead(claim.holder):
            reason = "its process no longer exists"
        else:
            continue
        if SamplingClaim.objects.filter(pk=claim.pk, holder=claim.holder).delete()[0]:
            logger.warning("taking over the claim of %d pairs held by %s: %s", claim.pairs, claim.holder, reason)


def sampling_claim_take(*, version: ModelVersion, holder: str) -> tuple[SamplingClaim | None, int]:
    """Claim the next batch of the pairs `version`'s buffer is missing; returns the claim (None: nothing is missing
    that another live claim is not already making) and how many pairs are still missing after it.

    Claims are taken one at a time per version (a row lock on the version; SQLite's transactions are IMMEDIATE), so
    the pairs on their way are counted once: the buffer is never filled past its target by refills that overlap."""
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(pk=version.pk).first()
        now = timezone.now()
        _claims_take_over(version, now)
        on_the_way = SamplingClaim.objects.live(now).filter(version=version).aggregate(total=Sum("pairs"))["total"]
        missing = settings.PAIR_BUFFER_TARGET - pairs_ready_count(version) - (on_the_way or 0)
        if missing <= 0:
            return None, 0
        size = min(missing, settings.PAIR_REFILL_BATCH)
        claim = SamplingClaim.objects.create(
            version=version,
            pairs=size,
            holder=holder,
            expires_at=now + timedelta(seconds=settings.SAMPLING_CLAIM_LEASE_SECONDS),
        )
        return claim, missing - size


@contextmanager
def _claim_held(claim: SamplingClaim) -> Iterator[None]:
    """Renew `claim` while the block runs (a heartbeat a third of the lease apart), release it after.

    Only its holder renews or releases it: both match on the holder too, so a claim taken over after a stall is
    never extended or deleted by the process that lost it."""
    lease = settings.SAMPLING_CLAIM_LEASE_SECONDS

    def renew() -> bool:
        expires = timezone.now() + timedelta(seconds=lease)
        return SamplingClaim.objects.filter(pk=claim.pk, holder=claim.holder).update(expires_at=expires) == 1

    try:
        with heartbeat(renew, every=lease / 3, name=f"the claim of {claim.pairs} pairs by {claim.holder}"):
            yield
    finally:
        SamplingClaim.objects.filter(pk=claim.pk, holder=claim.holder).delete()


# A worker that finds the model server not answering says so once a minute at most, among every worker (the cache
# holds who said it last): `make run` starts the workers before a local vLLM has loaded its model.
MODEL_SERVER_WAITING_SAY_EVERY_SECONDS = 60
MODEL_SERVER_WAITING_KEY = "pairloop:model-server-waiting-said"


def model_server_waiting_say(error: ModelServerUnavailable) -> bool:
    """Log, in one sentence, that sampling waits for the model server; at most once every
    MODEL_SERVER_WAITING_SAY_EVERY_SECONDS across processes. A traceback here read as a crash. True when it said so."""
    if not cache.add(MODEL_SERVER_WAITING_KEY, 1, MODEL_SERVER_WAITING_SAY_EVERY_SECONDS):
        return False
    logger.warning(
        "waiting for the model server at %s (starting, about a minute for a local vLLM; or down): pairs are sampled "
        "once it answers [%s]",
        ", ".join(model_server_urls()),
        error,
    )
    return True


def pairs_refill(
    *, client_factory: Callable[[], ModelServerPool] = client_from_settings, from_queue: bool = False
) -> int:
    """Claim the next batch of missing pairs from the serving version and make it; returns pairs made.

    When more pairs are missing than one batch, another refill is asked for first (unless one is queued already), so
    another worker makes the next batch meanwhile. `from_queue`: this is the worker's task, so the refill that was
    queued is no longer waiting. Raises ModelServerUnavailable when the model server cannot be reached (the task
    retries).
    """
    if from_queue:
        cache.delete(REFILL_QUEUED_KEY)  # the next request may queue one again
    version = ModelVersion.objects.serving()
    if version is None:
        logger.warning("no model version is serving; run `manage.py seed_demo` or start a round")
        return 0
    with client_factory() as client:
        # Every refill checks the serving adapter is loaded, so a restarted vLLM gets it back within one beat.
        version.ensure_loaded(client)
        claim, still_missing = sampling_claim_take(version=version, holder=holder_name())
        if claim is None:
            return 0
        with _claim_held(claim):
            if still_missing > 0:
                _pairs_refill_enqueue()
            made = _batch_make(version=version, wanted=claim.pairs, client=client)
    logger.info("made %d of a batch of %d pairs from %s", made, claim.pairs, version)
    return made


def _batch_make(*, version: ModelVersion, wanted: int, client: ModelServerPool) -> int:
    # A share of the new pairs is head-to-head: a canary's candidate, or an earlier version, against the serving one.
    head_to_head = head_to_head_pairs_refill(client=client, missing=wanted)
    wanted -= head_to_head
    if wanted <= 0:
        return head_to_head
    # Spare prompts stand in for any the server refuses, so the others still fill the buffer.
    prompts = _prompts_least_sampled(version, wanted * 2)
    if not prompts:
        logger.warning("no active prompts to sample pairs from (see prompts set aside by refusals)")
        return head_to_head
    return head_to_head + len(pairs_sample(version=version, prompts=prompts, client=client, wanted=wanted))


REFILL_CHECKED_KEY = "pairloop:pairs-buffer-checked"
REFILL_CHECK_SECONDS = 1


def refill_if_low() -> None:
    """After a vote: ask for more pairs when fewer than PAIR_BUFFER_LOW_WATERMARK are left to judge."""
    # One vote a second, across every process, looks: the others skip a count that just said the same. A refill
    # is throttled to one every 10 s anyway, and beat asks every PAIR_REFILL_INTERVAL. A database cache would cost
    # more statements than the count, so there every vote counts.
    if not cache_is_database() and not cache.add(REFILL_CHECKED_KEY, "1", timeout=REFILL_CHECK_SECONDS):
        return
    low = settings.PAIR_BUFFER_LOW_WATERMARK
    # Counts at most `low` rows (COUNT over a LIMIT): every vote runs this, and counting every open pair costs a scan
    # of all of them (about 5 ms at 20,000 on PostgreSQL).
    if Pair.objects.needing_judgements()[:low].count() < low:
        pairs_refill_request()


def pairs_refill_request(*, throttle: bool = True) -> None:
    """Ask the worker for more pairs; throttled to once every few seconds however many pages ask.

    Best-effort: pages and API reads call this, and must still answer when the broker is down (the request is
    logged and dropped; beat asks again every PAIR_REFILL_INTERVAL once the broker is back).
    """
    if not throttle or cache.add("pairloop:pairs-refill-requested", "1", timeout=10):
        transaction.on_commit(_pairs_refill_enqueue)


# Set while a refill we asked for waits in the queue: one waiting refill makes all the batches missing (each refill
# asks for the next), so more would only queue work that finds nothing to claim. Cleared by the refill when a worker
# starts it; the expiry covers a queue lost with the broker (beat's refills, every PAIR_REFILL_INTERVAL, also clear
# it).
REFILL_QUEUED_KEY = "pairloop:pairs-refill-queued"
REFILL_QUEUED_SECONDS = 300


def _pairs_refill_enqueue() -> None:
    """Queue a refill unless one already waits for a worker."""
    if not cache.add(REFILL_QUEUED_KEY, "1", timeout=REFILL_QUEUED_SECONDS):
        return
    # on_commit callbacks run inside the request: enqueue never raises, so a broker outage is no 500.
    if not enqueue("annotate.tasks.pairs_refill"):
        cache.delete(REFILL_QUEUED_KEY)  # nothing is queued: the next request must try again


# --- Head-to-head pairs: a canary's candidate, or an earlier version, against the serving one ----------------------


def pairs_sample_head_to_head(
    *,
    first: ModelVersion,
    second: ModelVersion,
    prompts: list[Prompt],
    client: ModelServerPool,
    sampled_from: ModelVersion | None = None,
) -> list[Pair]:
    """One answer per version to each prompt, with the same sampling settings (the campaign's first side) and system
    prompt, and each its own seed, stored as one pair whose A side is drawn at random. `sampled_from` is the serving
    version (the default), which the pair buffer counts it against; each answer's own version is on its completion."""
    owner = sampled_from or ModelVersion.objects.serving() or first
    campaigns = _campaigns_of(prompts)

    def sample(version: ModelVersion, prompt: Prompt) -> Sample:
        # Both versions answer with the first side of the campaign's recipe: the comparison is between versions.
        recipe = campaign_recipes(campaigns.get(prompt.prompt_set), version)[0]
        return recipe.sample(client, prompt)

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
        .filter(status=TrainingRound.Status.CANARY, active=True)
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


def head_to_head_pairs_refill(*, client: ModelServerPool, missing: int) -> int:
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


def _canary_pairs_make(training_round: TrainingRound, count: int, client: ModelServerPool) -> int:
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


def _earlier_pairs_make(count: int, client: ModelServerPool) -> int:
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
