"""Sampling pairs from the model server into the buffer of pairs ready to be judged."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Count, Q

from annotate.generation import ModelServerClient, Sample, SamplingParams, client_from_settings
from annotate.models import Completion, ModelVersion, Pair, Prompt

logger = logging.getLogger(__name__)


def pairs_ready_count(version: ModelVersion | None = None) -> int:
    """Pairs that still need votes, from `version` or from any version."""
    pairs = Pair.objects.needing_judgements()
    if version is not None:
        pairs = pairs.filter(sampled_from=version)
    return pairs.count()


def _prompts_least_sampled(version: ModelVersion, count: int) -> list[Prompt]:
    # Spread pairs over prompts: those with the fewest pairs from this version first, ties in random order.
    return list(
        Prompt.objects.filter(is_active=True)
        .annotate(pair_total=Count("pairs", filter=Q(pairs__sampled_from=version)))
        .order_by("pair_total", "?")[:count]
    )


def _new_seed() -> int:
    return secrets.randbits(31)


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
    )


def pair_create(*, prompt: Prompt, version: ModelVersion, first: Sample, second: Sample) -> Pair | None:
    """Store two answers as a pair, unless they are the same text (nothing to compare)."""
    if first.text.strip() == second.text.strip():
        logger.info("prompt %s: version %s gave identical twin answers; not making a pair", prompt.pk, version)
        return None
    with transaction.atomic():
        return Pair.objects.create(
            prompt=prompt,
            completion_a=_completion_create(prompt, version, first),
            completion_b=_completion_create(prompt, version, second),
            sampled_from=version,
            judgements_required=settings.JUDGEMENTS_PER_PAIR,
        )


def pairs_sample(*, version: ModelVersion, prompts: list[Prompt], client: ModelServerClient) -> list[Pair]:
    """Sample two seeded answers per prompt, all requests in flight together so the server batches them."""

    def sample(prompt: Prompt) -> Sample:
        return client.chat(
            model=version.name, messages=prompt.messages, params=SamplingParams.from_settings(_new_seed())
        )

    workers = max(1, settings.PAIR_GENERATION_CONCURRENCY * 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sample") as pool:
        futures = [(prompt, pool.submit(sample, prompt), pool.submit(sample, prompt)) for prompt in prompts]
        results = [(prompt, first.result(), second.result()) for prompt, first, second in futures]
    pairs = [pair_create(prompt=prompt, version=version, first=a, second=b) for prompt, a, b in results]
    return [pair for pair in pairs if pair is not None]


REFILL_LOCK = "pairloop:pairs-refill"


def pairs_refill(*, client_factory: Callable[[], ModelServerClient] = client_from_settings) -> int:
    """Top the buffer of ready pairs from the serving version up to PAIR_BUFFER_TARGET; returns pairs made.

    Raises ModelServerUnavailable when the model server cannot be reached (the task retries).
    """
    if not cache.add(REFILL_LOCK, "1", timeout=settings.VLLM_TIMEOUT * 3):
        logger.info("another refill is running; leaving the buffer to it")
        return 0
    try:
        version = ModelVersion.objects.serving()
        if version is None:
            logger.warning("no model version is serving; run `manage.py seed_demo` or start a round")
            return 0
        with client_factory() as client:
            # Every refill checks the serving adapter is loaded, so a restarted vLLM gets it back within one beat.
            version.ensure_loaded(client)
            missing = settings.PAIR_BUFFER_TARGET - pairs_ready_count(version)
            if missing <= 0:
                return 0
            prompts = _prompts_least_sampled(version, missing)
            if not prompts:
                logger.warning("no active prompts to sample pairs from")
                return 0
            made = pairs_sample(version=version, prompts=prompts, client=client)
        logger.info("made %d pairs from %s (%d were missing)", len(made), version, missing)
        return len(made)
    finally:
        cache.delete(REFILL_LOCK)


def refill_if_low() -> None:
    if pairs_ready_count() < settings.PAIR_BUFFER_LOW_WATERMARK:
        pairs_refill_request()


def pairs_refill_request(*, throttle: bool = True) -> None:
    """Ask the worker for more pairs; throttled to once every few seconds however many pages ask."""
    from annotate.tasks import pairs_refill as pairs_refill_task

    if not throttle or cache.add("pairloop:pairs-refill-requested", "1", timeout=10):
        transaction.on_commit(pairs_refill_task.delay)
