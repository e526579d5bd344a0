"""Webhook endpoints (register, deactivate, delete, test) and their deliveries (record, send, send again)."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from annotate import events
from annotate.broker import enqueue
from annotate.cache import cache_generation_bump, cached_read
from annotate.errors import Invalid
from annotate.hooks.transport import AddressRefused, webhook_address_resolve, webhook_post, webhook_url_problem
from annotate.invalidation import WEBHOOK_ENDPOINTS
from annotate.models import WebhookDelivery, WebhookEndpoint
from annotate.owners import holder_name

logger = logging.getLogger(__name__)

SEND_TASK = "annotate.tasks.webhook_delivery_send"


# --- Events --------------------------------------------------------------------------------------------------------


def webhook_deliveries_for_event(*, event: str, payload: dict[str, Any], **_signal: Any) -> int:
    """The receiver of events.event_happened: a delivery for each active endpoint subscribed to `event`."""
    # Most events (every vote) have no endpoint: which events have one is cached until an endpoint changes.
    subscribed = cached_read(
        WEBHOOK_ENDPOINTS,
        "events",
        lambda: sorted({name for names in WebhookEndpoint.objects.filter(active=True).values_list("events", flat=True)
                        for name in names}),
    )  # fmt: skip
    if event not in subscribed:
        return 0
    endpoints = [endpoint for endpoint in WebhookEndpoint.objects.filter(active=True) if event in endpoint.events]
    if not endpoints:
        return 0
    message = events.webhook_message(event=event, data=payload)
    return len(webhook_deliveries_create(endpoints=endpoints, message=message))


# --- Endpoints -----------------------------------------------------------------------------------------------------


def webhook_secret_new() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_endpoint_create(
    *, url: str, event_names: list[str], allow_private: bool, created_by: User | None
) -> WebhookEndpoint:
    """Register `url` for `event_names`. Invalid (nothing recorded) for a URL that is not http(s), carries
    credentials, or whose host does not resolve or resolves to a private address when `allow_private` is off; the
    address is checked again at every delivery."""
    url = url.strip()
    errors: dict[str, str] = {}
    problem = webhook_url_problem(url)
    if problem is None:
        try:
            webhook_address_resolve(url, allow_private=allow_private)
        except AddressRefused as refused:
            problem = str(refused)
    if problem:
        errors["url"] = problem
    unknown = sorted(set(event_names) - set(events.WEBHOOK_EVENTS))
    if unknown:
        errors["events"] = f"unknown events: {', '.join(unknown)[:200]}"
    elif not event_names:
        errors["events"] = "choose at least one event"
    if errors:
        raise Invalid(errors)
    return WebhookEndpoint.objects.create(
        url=url,
        events=sorted(set(event_names)),
        secret=webhook_secret_new(),
        allow_private=allow_private,
        created_by=created_by,
    )


def webhook_endpoint_set_active(*, endpoint: WebhookEndpoint, active: bool) -> WebhookEndpoint:
    """Switched off: no new deliveries, and those still pending fail at their next attempt, saying so."""
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(active=active)
    cache_generation_bump(WEBHOOK_ENDPOINTS)  # an update sends no post_save: which events have an endpoint changed
    endpoint.refresh_from_db()
    return endpoint


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """The endpoint and its deliveries are gone; a worker sending one of them finds nothing to record."""
    endpoint.delete()


def webhook_endpoint_test(*, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """A `webhook.test` event to this endpoint alone (active or not: staff may test before they switch it on)."""
    message = events.webhook_message(event=events.TEST, data={"endpoint": endpoint.pk})
    return webhook_deliveries_create(endpoints=[endpoint], message=message)[0]


# --- Deliveries ----------------------------------------------------------------------------------------------------


def webhook_deliveries_create(*, endpoints: list[WebhookEndpoint], message: dict[str, Any]) -> list[WebhookDelivery]:
    """One delivery of `message` per endpoint, recorded in the caller's transaction and handed to the workers once
    it commits. A broker that is down loses nothing: the sweep sends them after WEBHOOK_QUEUED_LEASE_SECONDS."""
    lease = timezone.now() + timedelta(seconds=settings.WEBHOOK_QUEUED_LEASE_SECONDS)
    deliveries = WebhookDelivery.objects.bulk_create(
        [
            WebhookDelivery(
                endpoint=endpoint,
                event=message["type"],
                payload=message,
                message_id=f"msg_{uuid.uuid4().hex}",
                holder=WebhookDelivery.QUEUED,
                lease_expires_at=lease,
                next_attempt_at=timezone.now(),
            )
            for endpoint in endpoints
        ]
    )
    delivery_ids = [delivery.pk for delivery in deliveries]
    transaction.on_commit(lambda: _enqueue_all(delivery_ids))
    return deliveries


def _enqueue_all(delivery_ids: list[int]) -> None:
    for delivery_id in delivery_ids:
        enqueue(SEND_TASK, delivery_id)


def webhook_signed_headers(*, secret: str, message_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for `body`: webhook-id, webhook-timestamp, webhook-signature (v1, HMAC-SHA256
    of id.timestamp.body with the endpoint's secret)."""
    signature = Webhook(secret).sign(msg_id=message_id, timestamp=at, data=body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "pairloop-webhooks/1",
    }


def _retry_in(attempts: int) -> float | None:
    schedule = settings.WEBHOOK_RETRY_SECONDS
    return schedule[attempts - 1] if attempts <= len(schedule) else None


def webhook_delivery_send(*, delivery_id: int) -> str | None:
    """One attempt at a delivery that is due, by whichever worker claims it first; records what the receiver
    answered. Returns the delivery's status after it, or None when there was nothing to do (not due, held by
    another worker, over, or deleted)."""
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None:
        return None
    endpoint = delivery.endpoint
    if not endpoint.active and delivery.event != events.TEST:
        delivery.give_up(reason="the endpoint was deactivated")
        return delivery.status
    holder = holder_name()
    # Longer than the task's time limit (2 x WEBHOOK_TOTAL_SECONDS): no second worker takes it while this one may
    # still be sending.
    if not delivery.claim(holder=holder, lease_seconds=3 * settings.WEBHOOK_TOTAL_SECONDS):
        return None
    # Sorted keys and no spaces: the signed bytes are the sent bytes, the same on every attempt.
    body = json.dumps(delivery.payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    headers = webhook_signed_headers(
        secret=endpoint.secret, message_id=delivery.message_id, body=body, at=datetime.now(tz=UTC)
    )
    answer = webhook_post(url=endpoint.url, body=body.encode(), headers=headers, allow_private=endpoint.allow_private)
    if answer.error:
        logger.info("webhook %s to endpoint %s: %s", delivery.message_id, endpoint.pk, answer.error)
    delivery.record_attempt(
        holder=holder,
        status_code=answer.status_code,
        error=answer.error,
        response=answer.excerpt,
        milliseconds=answer.milliseconds,
        retry_in=_retry_in(delivery.attempts) if answer.error else None,
    )
    return delivery.status


def webhook_deliveries_send_due() -> int:
    """The sweep: hand to the workers every pending delivery that is due and that nobody holds (a retry whose time
    came, a message the broker lost, a worker killed mid-attempt); returns how many. A delivery whose last attempt
    was lost with its worker fails, saying so."""
    now = timezone.now()
    due = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now).filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    )
    sent = 0
    for delivery in due.order_by("next_attempt_at")[:1000]:
        if delivery.holder not in ("", WebhookDelivery.QUEUED) and _retry_in(delivery.attempts) is None:
            delivery.give_up(reason=f"its worker ({delivery.holder}) stopped during the last attempt")
            continue
        if delivery.hand_to_queue(lease_seconds=settings.WEBHOOK_QUEUED_LEASE_SECONDS):
            enqueue(SEND_TASK, delivery.pk)
            sent += 1
    return sent


def webhook_deliveries_prune(*, now: datetime | None = None) -> int:
    """Delete the deliveries that ended (delivered or failed) more than WEBHOOK_KEEP_DAYS ago, so a delivery per
    vote does not pile up for good; returns how many. Pending ones stay whatever their age."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.WEBHOOK_KEEP_DAYS)
    ended = (WebhookDelivery.Status.DELIVERED, WebhookDelivery.Status.FAILED)
    deleted, _ = WebhookDelivery.objects.filter(status__in=ended, created_at__lt=cutoff).delete()
    return deleted
