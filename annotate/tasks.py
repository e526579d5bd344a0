"""Celery tasks: thin wrappers that call one service each."""

from __future__ import annotations

from celery import shared_task

from annotate import services
from annotate.generation import ModelServerUnavailable


@shared_task(
    autoretry_for=(ModelServerUnavailable,),
    retry_backoff=5,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=8,
)
def pairs_refill() -> int:
    """Top up the buffer of ready pairs; retried with backoff while the model server is down."""
    return services.pairs_refill()
