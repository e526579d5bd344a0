"""The one way an event leaves the app: `webhook_events_emit`, called on the line where the thing happens.

This module imports no models: annotate.models calls it from the state machines' transitions."""

from __future__ import annotations

from typing import Any, cast

from django.dispatch import Signal
from django.utils import timezone

VOTE_RECORDED = "vote.recorded"
ROUND_FINISHED = "round.finished"
ROUND_FAILED = "round.failed"
VERSION_SERVED = "version.served"
VERSION_ROLLED_BACK = "version.rolled_back"
EXPORT_READY = "export.ready"
CANARY_DECIDED = "canary.decided"
JUDGE_ROUTING_STOPPED = "judge.routing_stopped"
TEST = "webhook.test"  # sent on demand to one endpoint, whatever it subscribed to

WEBHOOK_EVENTS = {
    VOTE_RECORDED: "A vote recorded",
    ROUND_FINISHED: "A round finished (serving, trained, rejected or cancelled)",
    ROUND_FAILED: "A round failed",
    VERSION_SERVED: "A model version served",
    VERSION_ROLLED_BACK: "An earlier model version served again (a rollback)",
    EXPORT_READY: "An export ready to download",
    CANARY_DECIDED: "A canary decided (promote or reject)",
    JUDGE_ROUTING_STOPPED: "An AI judge's routing stopped by itself (its checked trust fell below the bars)",
}


def webhook_message(*, event: str, data: dict[str, Any]) -> dict[str, Any]:
    """The body every delivery carries (the Standard Webhooks envelope)."""
    return {"type": event, "timestamp": timezone.now().isoformat(), "data": data}


# Sent by webhook_events_emit; annotate.hooks.services records the deliveries (connected in AnnotateConfig.ready).
# A signal keeps this module free of models, so annotate.models can emit from its transitions without a circle.
event_happened = Signal()


def webhook_events_emit(*, event: str, payload: dict[str, Any]) -> int:
    """Record a delivery of `event` for every active endpoint that subscribed to it, in the caller's transaction, and
    hand each to a worker once that transaction commits (nothing is sent for work that rolled back). Returns how
    many deliveries were recorded."""
    answers = event_happened.send(sender=None, event=event, payload=payload)
    return sum(cast(int, count) for _, count in answers)
