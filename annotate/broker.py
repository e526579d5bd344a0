"""Enqueueing Celery tasks without letting a broker outage break the request that asked: the one way this project
sends a task."""

from __future__ import annotations

import logging
import re
from typing import Any

logger = logging.getLogger(__name__)


def enqueue(task_name: str, *args: Any) -> bool:
    """Send the task named `task_name` (annotate.tasks.X) with `args`; False (logged) when the broker cannot be
    reached. Callers decide what that means.

    By name, so the services that enqueue a task need not import annotate.tasks, which imports them: the tasks are
    registered by the Celery app's autodiscovery. One try to connect and no publish retries: with the broker down a
    request answers within a second or so (the defaults retry for several) and says so, instead of hanging or ending
    in a 500."""
    from annotate.celery import app

    if task_name not in app.tasks:
        app.loader.import_default_modules()  # a web process: autodiscovery has not run yet
    task = app.tasks[task_name]
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
            task.apply_async(args, connection=connection, retry=False)
    except Exception as error:
        # kombu raises OperationalError, redis-py ConnectionError, SQLAlchemy errors for the file broker...: whatever
        # the transport, the caller's answer must not become a 500 because the queue is away.
        logger.warning(
            "could not enqueue %s: the broker (%s) is unreachable: %s",
            task_name,
            broker_location(app.conf.broker_url),
            error,
        )
        return False
    return True


def broker_location(url: str | None) -> str:
    """The broker's URL without its password, for logs and health reports."""
    return re.sub(r"//[^@/]*@", "//***@", url or "")
