"""Webhooks with real Celery worker processes, as in the Procfile: a vote committed through the services is handed
to the webhook queue by the on-commit hook, and the `webhooks` worker's task delivers it, signed, to a real
receiver; the pair-sampling worker (default queue) never sees it."""

from collections.abc import Iterator

import pytest
from django.conf import settings

from annotate import events
from annotate.hooks import services as hooks
from annotate.models import WebhookDelivery
from tests.integration.conftest import _worker, wait_until

from .voting import vote_as_annotator
from .webhook_receiver import webhook_receiver

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def webhook_worker(django_db_setup) -> Iterator[object]:
    """The `webhooks` process: a Celery worker on this run's webhook queue."""
    yield from _worker("webhook-worker", settings.CELERY_WEBHOOK_QUEUE)


def test_a_committed_vote_reaches_the_receiver_through_the_webhook_worker(webhook_worker, make_pair, annotator):
    assert settings.CELERY_TASK_ROUTES["annotate.tasks.webhook_delivery_send"]["queue"] == settings.CELERY_WEBHOOK_QUEUE
    with webhook_receiver() as receiver:
        endpoint = hooks.webhook_endpoint_create(
            url=receiver.url + "/votes", event_names=[events.VOTE_RECORDED], allow_private=True, created_by=None
        )
        receiver.secrets["/votes"] = endpoint.secret
        judgement = vote_as_annotator(annotator, pair=make_pair())

        wait_until(lambda: receiver.requests, 60, "the worker to deliver the vote", webhook_worker,
                   webhook_worker.log_path)  # fmt: skip
        (request,) = receiver.requests
        assert isinstance(request.verified, dict), request.verified
        assert request.verified["data"]["judgement"] == judgement.pk
        delivery = wait_until(
            lambda: WebhookDelivery.objects.filter(status="delivered").first(), 30, "the delivery to be recorded"
        )
        assert delivery.attempts == 1 and delivery.last_status_code == 200
