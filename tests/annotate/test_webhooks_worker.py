"""Webhooks with a real Celery worker process: a vote committed through the services is handed to the worker by the
on-commit hook, and the worker's task delivers it, signed, to a real receiver."""

import pytest

from annotate.hooks import events
from annotate.hooks import services as hooks
from annotate.models import WebhookDelivery
from tests.integration.conftest import celery_worker, wait_until  # noqa: F401 (a fixture)

from .voting import vote_as_annotator
from .webhook_receiver import webhook_receiver

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_committed_vote_reaches_the_receiver_through_the_worker(celery_worker, make_pair, annotator):  # noqa: F811
    with webhook_receiver() as receiver:
        endpoint = hooks.webhook_endpoint_create(
            url=receiver.url + "/votes", event_names=[events.VOTE_RECORDED], allow_private=True, created_by=None
        )
        receiver.secrets["/votes"] = endpoint.secret
        pair = make_pair()
        judgement = vote_as_annotator(annotator, pair=pair)

        wait_until(lambda: receiver.requests, 60, "the worker to deliver the vote", celery_worker,
                   celery_worker.log_path)  # fmt: skip
        (request,) = receiver.requests
        assert isinstance(request.verified, dict), request.verified
        assert request.verified["data"]["judgement"] == judgement.pk
        delivery = wait_until(
            lambda: WebhookDelivery.objects.filter(status="delivered").first(), 30, "the delivery to be recorded"
        )
        assert delivery.attempts == 1 and delivery.last_status_code == 200
