"""Enqueueing Celery tasks without letting a broker outage break the request that asked."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def enqueue(task: Any, *args: Any) -> bool:
    """Send `task` with `args`; False (logged) when the broker cannot be reached. Callers decide what that means."""
    try:
        task.delay(*args)
    except Exception:
        # kombu raises OperationalError, redis-py ConnectionError, SQLAlchemy errors for the file broker...: whatever
        # the transport, the caller's answer must not become a 500 because the queue is away.
        logger.exception("could not enqueue %s%s: the broker is unreachable", getattr(task, "name", task), args)
        return False
    return True
