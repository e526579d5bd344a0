"""The webhook staff API and pages: registering (the secret shown once, masked afterwards), bad URLs refused with
a 400 that records nothing, switching off, deleting, a test event, and deliveries with their attempts."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.hooks import services as hooks
from annotate.models import WebhookDelivery, WebhookEndpoint

from .webhook_receiver import webhook_receiver

pytestmark = pytest.mark.django_db

BAD_URLS = [
    "ftp://example.com/",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "http://u:p@example.com/",
    "http://",
    "<script>alert(1)</script>",
    "http://169.254.169.254/latest/meta-data",
    "http://localhost:8000/",
]


@pytest.fixture
def api(staff):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    return client


@pytest.fixture
def receiver(settings):
    settings.WEBHOOK_READ_TIMEOUT = 0.5
    with webhook_receiver() as running:
        yield running


def test_the_api_registers_an_endpoint_and_shows_its_secret_once(api, receiver):
    answer = api.post(
        "/api/staff/webhooks/",
        {"url": receiver.url + "/hook", "events": ["vote.recorded", "export.ready"], "allow_private": True},
        format="json",
    )
    assert answer.status_code == 201, answer.json()
    endpoint = WebhookEndpoint.objects.get()
    assert answer.json()["secret"] == endpoint.secret
    listed = api.get("/api/staff/webhooks/").json()["results"]
    shown = api.get(f"/api/staff/webhooks/{endpoint.pk}/").json()
    assert listed[0]["secret"] == shown["secret"] == endpoint.secret_masked
    assert endpoint.secret not in api.get("/api/staff/webhooks/").content.decode()


def test_a_secret_in_the_url_is_shown_in_full_only_at_creation(api, client, staff, receiver):
    """Chat tools' incoming hooks carry their secret in the path; pages and the API show it masked after creation."""
    url = receiver.url + "/services/T0001/B0002/s3cretTokenValue?sig=abcd1234wxyz"
    created = api.post("/api/staff/webhooks/", {"url": url, "events": ["vote.recorded"], "allow_private": True},
                       format="json")  # fmt: skip
    assert created.status_code == 201 and created.json()["url"] == url
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.url == url and endpoint.url_masked == receiver.url + "/services…wxyz"
    client.force_login(staff)
    for shown in (
        api.get("/api/staff/webhooks/").content.decode(),
        api.get(f"/api/staff/webhooks/{endpoint.pk}/").content.decode(),
        client.get("/webhooks/").content.decode(),
        client.get(f"/webhooks/{endpoint.pk}/").content.decode(),
    ):
        assert "s3cretTokenValue" not in shown and "abcd1234" not in shown and "/services…wxyz" in shown


@pytest.mark.parametrize("url", BAD_URLS)
def test_the_api_refuses_a_bad_url_with_400(api, url):
    answer = api.post("/api/staff/webhooks/", {"url": url, "events": ["vote.recorded"]}, format="json")
    assert answer.status_code == 400 and answer.json()["errors"]["url"]
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "body", [{"url": "http://127.0.0.1/", "events": ["nope"]}, {"url": "http://127.0.0.1/", "events": "x"}, {}, []]
)
def test_the_api_refuses_bad_fields_with_400(api, body):
    answer = api.post("/api/staff/webhooks/", body, format="json")
    assert answer.status_code == 400
    assert not WebhookEndpoint.objects.exists()


def test_test_event_and_deliveries_in_the_api(api, receiver, staff):
    endpoint = hooks.webhook_endpoint_create(
        url=receiver.url + "/hook", event_names=["vote.recorded"], allow_private=True, created_by=staff
    )
    receiver.answers["/hook"] = [(500, b"nope", 0.0)]
    queued = api.post(f"/api/staff/webhooks/{endpoint.pk}/test/")
    assert queued.status_code == 202 and queued.json()["status"] == "pending"
    hooks.webhook_delivery_send(delivery_id=queued.json()["id"])  # as the worker does

    delivery = api.get(f"/api/staff/webhooks/{endpoint.pk}/deliveries/").json()["results"][0]
    assert delivery["attempts"] == 1 and delivery["last_status_code"] == 500
    assert delivery["attempt_log"][0]["response"] == "nope" and delivery["attempt_log"][0]["error"] == "answered 500"


def test_switch_off_and_delete_through_the_api(api, staff):
    endpoint = hooks.webhook_endpoint_create(
        url="http://127.0.0.1:9/", event_names=["vote.recorded"], allow_private=True, created_by=staff
    )
    assert api.patch(f"/api/staff/webhooks/{endpoint.pk}/", {"active": "maybe"}, format="json").status_code == 400
    answer = api.patch(f"/api/staff/webhooks/{endpoint.pk}/", {"active": False}, format="json")
    assert answer.status_code == 200 and answer.json()["active"] is False
    hooks.webhook_endpoint_test(endpoint=endpoint)
    assert api.delete(f"/api/staff/webhooks/{endpoint.pk}/").status_code == 204
    assert not WebhookEndpoint.objects.exists() and not WebhookDelivery.objects.exists()
    assert api.get(f"/api/staff/webhooks/{endpoint.pk}/").status_code == 404


def test_the_page_registers_an_endpoint_and_shows_the_secret_once(client, staff, receiver):
    client.force_login(staff)
    form = {"url": receiver.url + "/hook", "events": ["round.finished", "round.failed"], "allow_private": "on"}
    answer = client.post("/webhooks/", form)
    endpoint = WebhookEndpoint.objects.get()
    assert answer.status_code == 200 and endpoint.secret in answer.content.decode()
    again = client.get("/webhooks/").content.decode()
    assert endpoint.secret not in again and endpoint.secret_masked in again
    assert endpoint.secret not in client.get(f"/webhooks/{endpoint.pk}/").content.decode()


@pytest.mark.parametrize("url", BAD_URLS)
def test_the_page_refuses_a_bad_url_with_400(client, staff, url):
    client.force_login(staff)
    answer = client.post("/webhooks/", {"url": url, "events": ["vote.recorded"]})
    assert answer.status_code == 400 and b'role="alert"' in answer.content
    assert b"<script>alert(1)</script>" not in answer.content
    assert not WebhookEndpoint.objects.exists()


def test_the_page_sends_a_test_and_shows_the_attempts(client, staff, receiver):
    client.force_login(staff)
    endpoint = hooks.webhook_endpoint_create(
        url=receiver.url + "/hook", event_names=["vote.recorded"], allow_private=True, created_by=staff
    )
    receiver.answers["/hook"] = [(418, b"<img src=x onerror=alert(1)>", 0.0)]
    assert client.post(f"/webhooks/{endpoint.pk}/test/").status_code == 303
    hooks.webhook_delivery_send(delivery_id=WebhookDelivery.objects.get().pk)
    page = client.get(f"/webhooks/{endpoint.pk}/").content.decode()
    assert "answered 418" in page and "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page

    assert client.post(f"/webhooks/{endpoint.pk}/active/", {"active": "off"}).status_code == 303
    assert not WebhookEndpoint.objects.get().active
    assert client.post(f"/webhooks/{endpoint.pk}/active/", {"active": "sideways"}).status_code == 400
    assert client.post(f"/webhooks/{endpoint.pk}/delete/").status_code == 303
    assert not WebhookEndpoint.objects.exists()
