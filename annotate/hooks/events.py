"""The one way an event leaves the app: `webhook_events_emit`, called on the line where the thing happens.

This module imports no models at load time: annotate.models calls it from the state machines' transitions."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

VOTE_RECORDED = "vote.recorded"
ROUND_FINISHED = "round.finished"
ROUND_FAILED = "round.failed"
VERSION_SERVED = "version.served"
VERSION_ROLLED_BACK = "version.rolled_back"
EXPORT_READY = "export.ready"
CANARY_DECIDED = "canary.decided"
TEST = "webhook.test"  # sent on demand to one endpoint, whatever it subscribed to

WEBHOOK_EVENTS = {
    VOTE_RECORDED: "A vote recorded",
    ROUND_FINISHED: "A round finished (serving, trained, rejected or cancelled)",
    ROUND_FAILED: "A round failed",
    VERSION_SERVED: "A model version served",
    VERSION_ROLLED_BACK: "An earlier model version served again (a rollback)",
    EXPORT_READY: "An export ready to download",
    CANARY_DECIDED: "A canary decided (promote or reject)",
}


def webhook_message(*, event: str, data: dict[str, Any]) -> dict[str, Any]:
    """The body every delivery carries (the Standard Webhooks envelope)."""
    return {"type": event, "timestamp": timezone.now().isoformat(), "data": data}


def webhook_events_emit(*, event: str, payload: dict[str, Any]) -> int:
    """Record a delivery of `event` for every active endpoint that subscribed to it, in the caller's transaction, and
    hand each to a worker once that transaction commits (nothing is sent for work that rolled back). Returns how
    many deliveries were recorded."""
    from annotate.cache import cached_read
    from annotate.hooks.services import webhook_deliveries_create
    from annotate.invalidation import WEBHOOK_ENDPOINTS
    from annotate.models import WebhookEndpoint

    # Most events (every vote) have no endpoint: which events have one is cached until an endpoint changes.
    subscribed = cached_read(
        WEBHOOK_ENDPOINTS,
        "events",
        lambda: sorted({name for events in WebhookEndpoint.objects.filter(active=True).values_list("events", flat=True)
                        for name in events}),
    )  # fmt: skip
    if event not in subscribed:
        return 0
    endpoints = [endpoint for endpoint in WebhookEndpoint.objects.filter(active=True) if event in endpoint.events]
    if not endpoints:
        return 0
    return len(webhook_deliveries_create(endpoints=endpoints, message=webhook_message(event=event, data=payload)))
