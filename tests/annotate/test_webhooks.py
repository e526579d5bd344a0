"""Webhooks end to end: endpoints registered through the services, events emitted where things happen (a vote, a
round, an export), each delivery sent by the worker's task function to a real HTTP receiver that verifies the
signature with the standardwebhooks library; and receivers that fail, hang, redirect, or answer 10 MB."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from annotate import events
from annotate.data import exports
from annotate.data.exports import ExportFilters
from annotate.errors import Invalid
from annotate.hooks import services as hooks
from annotate.models import WebhookDelivery, WebhookEndpoint
from annotate.rounds import canary
from annotate.rounds import services as rounds

from .conftest import run_in_threads, run_round
from .voting import vote_as_annotator
from .webhook_receiver import Receiver, webhook_receiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver():
    with webhook_receiver() as running:
        yield running


@pytest.fixture(autouse=True)
def quick_webhooks(settings):
    # Retries at once; timeouts long enough that a receiver in this process answers in time on a loaded machine
    # (the hang test shortens the read timeout for itself).
    settings.WEBHOOK_CONNECT_TIMEOUT = 5.0
    settings.WEBHOOK_READ_TIMEOUT = 5.0
    settings.WEBHOOK_TOTAL_SECONDS = 10.0
    settings.WEBHOOK_RETRY_SECONDS = [0.0, 0.0]


def endpoint_at(receiver: Receiver, path: str, event_names: list[str], staff=None) -> WebhookEndpoint:
    endpoint = hooks.webhook_endpoint_create(
        url=receiver.url + path, event_names=event_names, allow_private=True, created_by=staff
    )
    receiver.secrets[path] = endpoint.secret
    return endpoint


def deliver_pending() -> list[str | None]:
    """What the workers do with the deliveries handed to them: one attempt each."""
    pending = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING).order_by("id")
    return [hooks.webhook_delivery_send(delivery_id=delivery.pk) for delivery in pending]


def test_a_receiver_gets_signed_events_for_a_vote_a_round_and_an_export(loop, receiver, make_pair, staff, tmp_path):
    loop.EXPORT_DIR = tmp_path / "exports"
    every = [events.VOTE_RECORDED, events.ROUND_FINISHED, events.ROUND_FAILED, events.VERSION_SERVED,
             events.EXPORT_READY]  # fmt: skip
    endpoint_at(receiver, "/all", every, staff)
    endpoint_at(receiver, "/votes-only", [events.VOTE_RECORDED])

    voter = staff
    pair = make_pair(texts=("one more", "one more, longer"))
    judgement = vote_as_annotator(voter, pair=pair, choice="b", strength=1, rationale="<script>x</script>")
    training_round = run_round()
    export = exports.export_run(
        export=exports.export_create(
            created_by=staff, dataset_format="trl-preference", file_format="jsonl", filters=ExportFilters()
        )
    )
    assert deliver_pending() == ["delivered"] * 5

    assert receiver.events("/all") == [events.VOTE_RECORDED, events.VERSION_SERVED, events.ROUND_FINISHED,
                                       events.EXPORT_READY]  # fmt: skip
    assert receiver.events("/votes-only") == [events.VOTE_RECORDED]
    assert all(isinstance(request.verified, dict) for request in receiver.requests), receiver.requests
    vote, served, finished, ready = (request.verified["data"] for request in receiver.received("/all"))
    assert vote["judgement"] == judgement.pk and vote["choice"] == "b" and "rationale" not in vote
    assert finished == {"round": training_round.pk, "status": "serving", "error": "",
                        "result_version": training_round.result_version.name}  # fmt: skip
    assert served["name"] == training_round.result_version.name
    assert ready["export"] == export.pk and ready["row_count"] == export.row_count
    assert WebhookDelivery.objects.filter(status="delivered", attempts=1).count() == 5


def test_deliveries_are_recorded_with_the_work_and_sent_only_after_it_commits(
    receiver, staff, django_capture_on_commit_callbacks
):
    endpoint_at(receiver, "/hook", [events.EXPORT_READY])
    with pytest.raises(RuntimeError), transaction.atomic():
        events.webhook_events_emit(event=events.EXPORT_READY, payload={"export": 1})
        raise RuntimeError("the export's transaction rolled back")
    assert not WebhookDelivery.objects.exists()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert events.webhook_events_emit(event=events.EXPORT_READY, payload={"export": 2}) == 1
        assert events.webhook_events_emit(event=events.VOTE_RECORDED, payload={}) == 0  # not subscribed
    assert len(callbacks) == 1 and receiver.requests == []


def test_a_receiver_answering_500_then_200_gets_the_same_message_again(receiver, staff):
    endpoint = endpoint_at(receiver, "/flaky", [events.VOTE_RECORDED])
    receiver.answers["/flaky"] = [(500, b"<h1>down</h1>", 0.0), (200, b"thanks", 0.0)]
    delivery = hooks.webhook_endpoint_test(endpoint=endpoint)

    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) == "pending"
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (1, 500, "answered 500")
    assert delivery.last_response == "<h1>down</h1>"

    assert hooks.webhook_deliveries_send_due() == 1  # the retry is due (WEBHOOK_RETRY_SECONDS = 0)
    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) == "delivered"
    delivery.refresh_from_db()
    assert [entry["status_code"] for entry in delivery.attempt_log] == [500, 200]
    first, second = receiver.received("/flaky")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.message_id
    assert isinstance(second.verified, dict) and second.verified["type"] == events.TEST


def test_a_retry_waits_for_its_time(receiver, staff, settings):
    settings.WEBHOOK_RETRY_SECONDS = [60.0]
    endpoint = endpoint_at(receiver, "/flaky", [events.VOTE_RECORDED])
    receiver.answers["/flaky"] = [(500, b"", 0.0)]
    delivery = hooks.webhook_endpoint_test(endpoint=endpoint)
    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) == "pending"
    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) is None  # a second message for it: not due yet
    assert hooks.webhook_deliveries_send_due() == 0
    assert len(receiver.received("/flaky")) == 1


def test_retries_end_in_failed_after_the_last_attempt(receiver, staff, settings):
    settings.WEBHOOK_RETRY_SECONDS = [0.0]
    endpoint = endpoint_at(receiver, "/down", [events.VOTE_RECORDED])
    receiver.answers["/down"] = [(503, b"", 0.0)]
    delivery = hooks.webhook_endpoint_test(endpoint=endpoint)
    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) == "pending"
    hooks.webhook_deliveries_send_due()
    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) == "failed"
    assert hooks.webhook_deliveries_send_due() == 0
    assert len(receiver.received("/down")) == 2


def test_a_receiver_that_hangs_is_a_recorded_timeout(receiver, staff, settings):
    settings.WEBHOOK_READ_TIMEOUT = 0.5
    endpoint = endpoint_at(receiver, "/hang", [events.VOTE_RECORDED])
    receiver.answers["/hang"] = [(200, b"late", 3.0)]
    delivery = hooks.webhook_endpoint_test(endpoint=endpoint)
    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) == "pending"
    delivery.refresh_from_db()
    # No answer recorded: the read timeout (0.5 s) ended the attempt before the receiver's 3 s were up.
    assert delivery.last_status_code is None and delivery.last_error.startswith("timed out")
    assert delivery.last_response == "" and delivery.attempt_log[0]["status_code"] is None


def test_a_redirect_is_a_failure_and_is_not_followed(receiver, staff):
    endpoint = endpoint_at(receiver, "/moved", [events.VOTE_RECORDED])
    receiver.answers["/moved"] = [(302, b"", 0.0)]
    receiver.headers["/moved"] = {"Location": receiver.url + "/elsewhere"}
    delivery = hooks.webhook_endpoint_test(endpoint=endpoint)
    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) == "pending"
    delivery.refresh_from_db()
    assert delivery.last_status_code == 302 and "not followed" in delivery.last_error
    assert receiver.received("/elsewhere") == []


def test_a_huge_or_garbled_answer_is_read_only_to_the_cap(receiver, staff, settings):
    endpoint = endpoint_at(receiver, "/huge", [events.VOTE_RECORDED])
    receiver.answers["/huge"] = [(200, b"\xff\xfe<b>" + b"x" * (10 * 1024 * 1024), 0.0)]
    delivery = hooks.webhook_endpoint_test(endpoint=endpoint)
    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) == "delivered"
    delivery.refresh_from_db()
    assert len(delivery.last_response.encode()) <= settings.WEBHOOK_RESPONSE_MAX_BYTES + 8
    assert delivery.last_response.startswith("\ufffd\ufffd<b>")


def test_private_addresses_are_refused_unless_staff_allow_them(receiver, staff):
    for url in (receiver.url + "/hook", "http://localhost/", "http://[::1]/", "http://169.254.169.254/latest",
                "http://10.1.2.3/", "http://[::ffff:127.0.0.1]/"):  # fmt: skip
        with pytest.raises(Invalid) as refused:
            hooks.webhook_endpoint_create(url=url, event_names=[events.VOTE_RECORDED], allow_private=False,
                                          created_by=staff)  # fmt: skip
        assert "url" in refused.value.errors, url
    assert not WebhookEndpoint.objects.exists()


def test_the_address_is_checked_again_when_sending(receiver, staff, monkeypatch):
    """A name that resolved to a public address at registration and to a private one later (DNS rebinding) is
    refused at send time: nothing reaches the private address."""
    real_getaddrinfo = socket.getaddrinfo
    answers = {"hooks.example.com": "93.184.215.14"}

    def resolve(host, port, *args, **kwargs):
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)  # the DNS: the one edge that cannot run here
    endpoint = hooks.webhook_endpoint_create(
        url="http://hooks.example.com:9/hook", event_names=[events.VOTE_RECORDED], allow_private=False, created_by=staff
    )
    answers["hooks.example.com"] = "127.0.0.1"
    delivery = hooks.webhook_endpoint_test(endpoint=endpoint)
    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) == "pending"
    delivery.refresh_from_db()
    assert delivery.last_error.startswith("refused: 127.0.0.1 is a private")
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/hook", "http"),
        ("javascript:alert(1)", "http"),
        ("file:///etc/passwd", "http"),
        ("http://user:pass@example.com/", "password"),
        ("http://", "host"),
        ("http://example.com:99999/", "port"),
        ("http://exa mple.com/", "spaces"),
        ("https://" + "a" * 600 + ".com/", "500"),
    ],
)
def test_a_bad_url_is_refused_and_nothing_is_recorded(url, says, staff):
    with pytest.raises(Invalid) as refused:
        hooks.webhook_endpoint_create(url=url, event_names=[events.VOTE_RECORDED], allow_private=True, created_by=staff)
    assert says in refused.value.errors["url"].lower()
    assert not WebhookEndpoint.objects.exists()


def test_unknown_or_no_events_are_refused(receiver, staff):
    for names, says in (([], "at least one"), (["vote.recorded", "<b>x</b>"], "unknown events: <b>x</b>")):
        with pytest.raises(Invalid) as refused:
            hooks.webhook_endpoint_create(url=receiver.url, event_names=names, allow_private=True, created_by=staff)
        assert says in refused.value.errors["events"]


def test_a_deactivated_endpoint_gets_nothing_more(receiver, staff):
    endpoint = endpoint_at(receiver, "/off", [events.EXPORT_READY])
    events.webhook_events_emit(event=events.EXPORT_READY, payload={"export": 1})
    hooks.webhook_endpoint_set_active(endpoint=endpoint, active=False)
    assert deliver_pending() == ["failed"]
    assert events.webhook_events_emit(event=events.EXPORT_READY, payload={"export": 2}) == 0
    assert receiver.requests == []
    assert WebhookDelivery.objects.get().last_error == "the endpoint was deactivated"


def test_a_delivery_whose_worker_died_is_sent_again_by_the_sweep(receiver, staff, settings):
    endpoint = endpoint_at(receiver, "/hook", [events.VOTE_RECORDED])
    delivery = hooks.webhook_endpoint_test(endpoint=endpoint)
    # A worker took it and was killed before it could record anything (its lease ran out).
    assert delivery.claim(holder="gone-host:1:dead", lease_seconds=0)
    assert hooks.webhook_deliveries_send_due() == 1
    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) == "delivered"
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and len(receiver.received("/hook")) == 1


def test_the_secret_is_a_standard_webhooks_secret_and_masked_afterwards(receiver, staff):
    endpoint = endpoint_at(receiver, "/hook", [events.VOTE_RECORDED])
    assert endpoint.secret.startswith("whsec_") and len(endpoint.secret) > 40
    assert endpoint.secret_masked == "whsec_…" + endpoint.secret[-4:]


def test_a_canary_decision_and_a_rollback_are_events_too(loop, receiver, staff, serving_version):
    endpoint_at(receiver, "/ops", [events.CANARY_DECIDED, events.ROUND_FINISHED, events.VERSION_ROLLED_BACK])
    canary_round = rounds.round_start(trigger="api", gate_mode="human")
    rounds.round_run(canary_round.pk)
    canary_round.refresh_from_db()
    assert canary_round.status == "canary"
    canary.canary_decide_early(training_round=canary_round, by=staff, decision="reject", reason="reads worse")
    served_round = run_round()
    assert served_round.status == "serving"
    api = APIClient()
    api.force_authenticate(staff)
    assert api.post(f"/api/model-versions/{serving_version.pk}/serve/").status_code == 200  # back to the base model
    deliver_pending()

    assert receiver.events("/ops") == [events.ROUND_FINISHED, events.CANARY_DECIDED, events.ROUND_FINISHED,
                                       events.VERSION_ROLLED_BACK]  # fmt: skip
    rejected, decided, finished, rolled_back = (request.verified["data"] for request in receiver.received("/ops"))
    assert rejected["round"] == decided["round"] == canary_round.pk and rejected["status"] == "rejected"
    assert decided["decision"] == "reject" and decided["reason"] == "decided early: reads worse"
    assert finished == {"round": served_round.pk, "status": "serving", "error": "",
                        "result_version": served_round.result_version.name}  # fmt: skip
    assert rolled_back == {"version": serving_version.pk, "name": serving_version.name, "was": "retired"}


def test_with_the_broker_down_the_work_is_done_and_the_sweep_sends_the_delivery_later(
    receiver, staff, make_pair, broker_down, settings
):
    settings.WEBHOOK_QUEUED_LEASE_SECONDS = 0.0  # the sweep may send again at once
    endpoint_at(receiver, "/hook", [events.VOTE_RECORDED])
    vote_as_annotator(staff, pair=make_pair())  # the on-commit enqueue fails (logged); the vote stands
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.holder == WebhookDelivery.QUEUED
    assert hooks.webhook_deliveries_send_due() == 1  # handed to the queue again (which is still down: logged)
    assert hooks.webhook_delivery_send(delivery_id=delivery.pk) == "delivered"  # a worker takes it once it is back


@pytest.mark.django_db(transaction=True)
def test_two_workers_given_the_same_delivery_send_it_once(receiver, staff):
    endpoint = endpoint_at(receiver, "/hook", [events.VOTE_RECORDED])
    receiver.answers["/hook"] = [(200, b"ok", 0.3)]  # slow enough that both workers are at it together
    delivery = hooks.webhook_endpoint_test(endpoint=endpoint)
    outcomes: list[str | None] = []
    run_in_threads([lambda: outcomes.append(hooks.webhook_delivery_send(delivery_id=delivery.pk))] * 2)
    assert sorted(outcomes, key=str) == [None, "delivered"]
    assert len(receiver.received("/hook")) == 1
    assert WebhookDelivery.objects.get().attempts == 1


def test_deliveries_that_ended_are_pruned_after_the_days_kept(receiver, staff, settings):
    settings.WEBHOOK_RETRY_SECONDS = []
    endpoint = endpoint_at(receiver, "/hook", [events.VOTE_RECORDED])
    receiver.answers["/hook"] = [(200, b"", 0.0), (500, b"", 0.0)]
    hooks.webhook_endpoint_test(endpoint=endpoint)
    hooks.webhook_endpoint_test(endpoint=endpoint)
    assert deliver_pending() == ["delivered", "failed"] and hooks.webhook_deliveries_prune() == 0
    pending = hooks.webhook_endpoint_test(endpoint=endpoint)
    later = timezone.now() + timedelta(days=settings.WEBHOOK_KEEP_DAYS, minutes=1)
    pending.refresh_from_db()
    assert pending.status == "pending"
    assert hooks.webhook_deliveries_prune(now=later) == 2
    assert list(WebhookDelivery.objects.values_list("pk", flat=True)) == [pending.pk]
