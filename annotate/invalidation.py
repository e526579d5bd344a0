"""What forgets the cached reads of the annotator's cycle (annotate/cache.py) when the rows they come from change.

Signals, because these rows change in many places (the admin, staff pages, the API, group membership); the one
queryset update that bypasses them (switching a webhook endpoint on or off) bumps the generation itself."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, User
from django.db.models.signals import m2m_changed, post_delete, post_save

from annotate.cache import cache_generation_bump
from annotate.models import AnnotatorStanding, Campaign, Judge, WebhookEndpoint

# Whether an annotator is paused, and the campaigns open to them (campaign rows, their groups, the user's groups).
LEASE_INPUTS = "lease-inputs"
# Which events have an active endpoint.
WEBHOOK_ENDPOINTS = "webhook-endpoints"
# Which campaigns show their AI judge's verdict to annotators.
JUDGE_HINTS = "judge-hints"


def _lease_inputs_changed(**_: Any) -> None:
    cache_generation_bump(LEASE_INPUTS)


def _webhook_endpoints_changed(**_: Any) -> None:
    cache_generation_bump(WEBHOOK_ENDPOINTS)


def _judges_changed(**_: Any) -> None:
    cache_generation_bump(JUDGE_HINTS)


def connect() -> None:
    for model in (AnnotatorStanding, Campaign, Group):
        post_save.connect(_lease_inputs_changed, sender=model, dispatch_uid=f"lease-inputs-save-{model.__name__}")
        post_delete.connect(_lease_inputs_changed, sender=model, dispatch_uid=f"lease-inputs-delete-{model.__name__}")
    for through in (Campaign.groups.through, User.groups.through):
        m2m_changed.connect(_lease_inputs_changed, sender=through, dispatch_uid=f"lease-inputs-m2m-{through.__name__}")
    post_save.connect(_webhook_endpoints_changed, sender=WebhookEndpoint, dispatch_uid="webhook-endpoints-save")
    post_delete.connect(_webhook_endpoints_changed, sender=WebhookEndpoint, dispatch_uid="webhook-endpoints-delete")
    post_save.connect(_judges_changed, sender=Judge, dispatch_uid="judge-hints-save")
    post_delete.connect(_judges_changed, sender=Judge, dispatch_uid="judge-hints-delete")
