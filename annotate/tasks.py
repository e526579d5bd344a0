"""Celery tasks: thin wrappers that load by id and call one service each."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_ready
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings

from annotate.annotation import services
from annotate.data import exports, import_jobs
from annotate.hooks import services as hooks
from annotate.judging import services as judging
from annotate.models import DataImport, Export, TrainingRound
from annotate.rounds import canary, deploy, prescore, warm
from annotate.rounds import services as rounds
from annotate.sampling import services as sampling
from annotate.sampling.generation import ModelServerUnavailable
from annotate.turns import services as turns

logger = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=3)  # beat asks again every PAIR_REFILL_INTERVAL: a long outage piles up nothing
def pairs_refill(self: Task) -> int:
    """Top up the buffer of ready pairs; retried with backoff while the model server is down.

    Prompts the server refuses are recorded and replaced, so they never fail the task (see sampling.pairs_sample).
    A model server that does not answer (still loading, at start-up) is a wait, not a failure: sampling says so in
    one line, and the task retries, then leaves it to beat, without a traceback.
    """
    try:
        return sampling.pairs_refill(from_queue=True)
    except ModelServerUnavailable as error:
        sampling.model_server_waiting_say(error)
        if self.request.retries >= (self.max_retries or 0):
            return 0
        countdown = get_exponential_backoff_interval(5, self.request.retries, 120, full_jitter=True)
        raise self.retry(countdown=countdown) from None


# A round runs for minutes to hours: acknowledged on receipt, so a broker's visibility timeout never hands it to a
# second worker. A worker lost mid-round stops its heartbeat; work_abandoned_end ends the round with the reason.
@shared_task(acks_late=False)
def round_run(round_id: int) -> None:
    rounds.round_run(round_id)


@shared_task(
    acks_late=False,
    autoretry_for=(ModelServerUnavailable,),
    retry_backoff=10,
    retry_backoff_max=300,
    max_retries=10,
)
def round_deploy(round_id: int) -> None:
    """Deploy a round that is deploying (just evaluated, or promoted), or retry one the model server missed."""
    deploy.round_deploy_retry(round_id=round_id)


@shared_task(acks_late=False)
def round_prescore() -> str:
    """Score ahead what the next round would score first, while the trainer waits (annotate.rounds.prescore)."""
    done = prescore.round_prescore()
    logger.info("prescore: %s", done)
    return done


@shared_task(acks_late=False)
def round_measure_lengths(round_id: int) -> None:
    rounds.round_measure_lengths(
        TrainingRound.objects.select_related("result_version", "parent_version").get(pk=round_id)
    )


@shared_task
def leases_expire() -> int:
    """Free the places of leases that ran out, so their pairs go to other annotators."""
    return services.leases_expire()


@shared_task
def rounds_start_when_due() -> int | None:
    """Start a round once ROUND_AUTO_MIN_NEW_VOTES usable votes have come in since the last round began."""
    training_round = rounds.rounds_start_when_due()
    return training_round.pk if training_round else None


@shared_task
def canaries_decide() -> str | None:
    """Promote or reject the running canary once its votes (or its time) are in; heartbeat it meanwhile."""
    return canary.canaries_decide()


@worker_ready.connect
def _fill_the_buffer_at_start(sender: Any, **kwargs: Any) -> None:
    # A fresh start (or a restarted vLLM) gets pairs, and the serving adapter reloaded, without waiting for beat.
    sampling.pairs_refill_request(throttle=False)


@worker_ready.connect
def _warm_the_trainer_at_start(sender: Any, **kwargs: Any) -> None:
    # A trainer (a solo worker on the training queue) loads its warm trainer now, not when the first round waits for it.
    # In a pool of processes the rounds run in the pool's children, which start their own.
    solo = type(sender.pool).__module__ == "celery.concurrency.solo"
    if solo and settings.CELERY_TRAINING_QUEUE in sender.app.amqp.queues.consume_from and warm.warm_start_enabled():
        warm.warm_trainer(str(settings.BASE_MODEL_DIR))


# Acknowledged on receipt like a round: an export runs once (Export.start), so a redelivery would only find it
# started. A worker lost mid-export stops its heartbeat; work_abandoned_end ends the export with the reason.
@shared_task(acks_late=False)
def export_run(export_id: int) -> None:
    """Write an export asked for on the staff page or through the API."""
    exports.export_run(export=Export.objects.get(pk=export_id))


# Acknowledged on receipt too: an import runs once (DataImport.start). A worker lost mid-import rolls back what it
# wrote, and work_abandoned_end ends the import saying so.
@shared_task(acks_late=False)
def data_import_run(import_id: int) -> None:
    """Import a file uploaded on a data page or through the API."""
    import_jobs.data_import_run(data_import=DataImport.objects.get(pk=import_id))


@shared_task
def work_abandoned_end() -> int:
    """End the work whose worker died without a word (running exports, imports and rounds), saying why; returns how
    many."""
    return exports.exports_abandoned_end() + import_jobs.data_imports_abandoned_end() + rounds.rounds_abandoned_end()


# Acknowledged on receipt: the delivery row is the truth, and a worker lost mid-attempt leaves it to the sweep. The
# time limit stops a receiver that drips its answer past the client's own timeouts (prefork workers).
@shared_task(acks_late=False, time_limit=2 * settings.WEBHOOK_TOTAL_SECONDS)
def webhook_delivery_send(delivery_id: int) -> str | None:
    """One attempt at one webhook delivery."""
    return hooks.webhook_delivery_send(delivery_id=delivery_id)


@shared_task
def webhook_deliveries_send_due() -> int:
    """Hand the webhook deliveries that are due (retries, lost messages, lost workers) to the workers."""
    return hooks.webhook_deliveries_send_due()


@shared_task
def webhook_deliveries_prune() -> int:
    """Delete webhook deliveries that ended more than WEBHOOK_KEEP_DAYS ago."""
    return hooks.webhook_deliveries_prune()


# Acknowledged on receipt: each verdict row names its holder and expires, so a worker lost mid-question leaves it to
# the next run. The time limit covers a batch of questions that each stop at JUDGE_TOTAL_SECONDS.
@shared_task(acks_late=False, time_limit=2 * settings.JUDGE_BATCH_PAIRS * settings.JUDGE_TOTAL_SECONDS + 60)
def judge_run(judge_id: int) -> int:
    """Ask a campaign's AI judge about a batch of pairs."""
    return judging.judge_run(judge_id=judge_id)


@shared_task
def judges_run() -> int:
    """A batch for every enabled AI judge (beat)."""
    return judging.judges_run()


@shared_task
def continuation_make(continuation_id: int) -> bool:
    """Sample the pair of an annotator's longer conversation (annotate.turns), when no page streamed it."""
    return turns.continuation_pair_make(continuation_id=continuation_id)


@shared_task
def continuations_make_due() -> int:
    return turns.continuations_make_due()
