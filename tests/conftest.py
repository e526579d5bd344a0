"""Fixtures shared by the whole suite (the test environment itself is set in tests/settings.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError
from django.db.backends.base.operations import BaseDatabaseOperations

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def flush_retried_on_deadlock(flush: Callable[..., Any], attempts: int = 5, pause: float = 1.0) -> Callable[..., Any]:
    """`flush` (BaseDatabaseOperations.execute_sql_flush), tried again when PostgreSQL ended it as a deadlock.

    Between transactional tests pytest-django empties every table with one TRUNCATE. The tests that start real Celery
    workers leave them running, as production would, and a worker may be in a transaction at that moment (a refill
    writing pairs): PostgreSQL then ends one of the two as a deadlock. CI saw the flush lose once, which left the
    tables full and failed the next test. The flush runs in one transaction and rolls back whole, so it is the one
    that waits and tries again; the workers' transactions are what is under test."""

    def execute_sql_flush(self: BaseDatabaseOperations, sql_list: Any) -> Any:
        for attempt in range(attempts):
            try:
                return flush(self, sql_list)
            except OperationalError as error:
                if "deadlock detected" not in str(error) or attempt == attempts - 1:
                    raise
                time.sleep(pause)
        return None

    return execute_sql_flush


@pytest.fixture(autouse=True, scope="session")
def _flush_past_workers() -> Iterator[None]:
    original = BaseDatabaseOperations.execute_sql_flush
    BaseDatabaseOperations.execute_sql_flush = flush_retried_on_deadlock(original)  # type: ignore[method-assign]
    yield
    BaseDatabaseOperations.execute_sql_flush = original  # type: ignore[method-assign]


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI the PostgreSQL and Redis services are expected: fail at once, never skip, when they are missing."""
    if os.environ.get("CI", "").lower() not in ("1", "true"):
        return
    database, broker = os.environ.get("DATABASE_URL", ""), os.environ.get("CELERY_BROKER_URL", "")
    if database and not database.startswith("postgres"):
        pytest.exit(f"CI expects PostgreSQL, DATABASE_URL is {database!r}", returncode=3)
    if database and not broker.startswith("redis"):
        pytest.exit(f"CI expects Redis, CELERY_BROKER_URL is {broker!r}", returncode=3)


@pytest.fixture
def annotator(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user("ann", password="ann-password-1")


@pytest.fixture
def other_annotator(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user("bea", password="bea-password-1")


@pytest.fixture
def staff(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user("sam", password="sam-password-1", is_staff=True)


@pytest.fixture
def serving_version(db):  # type: ignore[no-untyped-def]
    from annotate.models import ModelVersion

    # The way the app makes its first version: the base model, serving because nothing serves yet.
    version = ModelVersion.objects.ensure_base(name="policy-v0-secret-name", base_model="/models/base")
    assert version.status == ModelVersion.Status.SERVING
    return version


@pytest.fixture
def make_pair(serving_version) -> Callable[..., object]:  # type: ignore[no-untyped-def]
    """Make a pair from the serving version without a model server: for tests of what happens after sampling."""
    from annotate.models import Completion, Pair, Prompt

    counter = iter(range(1, 10_000))

    def make(
        texts: tuple[str, str] = ("Answer one.", "Answer two."),
        messages: list[dict[str, str]] | None = None,
        required: int | None = None,
        prompt_set: str = "default",
        version: object = None,
    ) -> Pair:
        """A pair of `texts` sampled from `version` (by default the serving_version fixture's)."""
        version = version or serving_version
        number = next(counter)
        prompt = Prompt.objects.create(
            messages=messages or [{"role": "user", "content": f"Question number {number}?"}],
            source="test",
            prompt_set=prompt_set,
        )
        completions = [
            Completion.objects.create(
                prompt=prompt,
                model_version=version,
                text=text,
                sampling={"temperature": 0.8, "top_p": 0.95, "max_tokens": 64, "seed": seed, "n": 1},
                seed=seed,
                finish_reason="stop",
                prompt_tokens=10,
                completion_tokens=5,
                latency_ms=100,
            )
            for seed, text in enumerate(texts, start=number * 10)
        ]
        return Pair.objects.create(
            prompt=prompt,
            completion_a=completions[0],
            completion_b=completions[1],
            sampled_from=version,
            judgements_required=required,
        )

    return make


@pytest.fixture
def broker_down(monkeypatch):  # type: ignore[no-untyped-def]
    """The Celery app's broker (for reading and writing) is a Redis URL where nothing listens: every enqueue
    really fails, as when Redis is down. The app's connection pools are forgotten before and after, not closed: a
    producer elsewhere may still hold one, and a closed pool answers "Acquire on closed pool" to its next user."""
    import socket

    from django.core.cache import cache

    from annotate.celery import app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    url = f"redis://127.0.0.1:{port}/0"
    keys = ("broker_url", "broker_write_url", "broker_connection_timeout", "broker_connection_max_retries",
            "task_publish_retry")  # fmt: skip
    saved = {key: app.conf[key] for key in keys}

    def forget_connections() -> None:
        app._pool = None
        app.amqp._producer_pool = None

    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads this variable before its own setting
    app.conf.update(
        broker_url=url,
        broker_write_url=url,
        broker_connection_timeout=0.5,
        broker_connection_max_retries=0,
        task_publish_retry=False,  # fail at once: the tests are about what the pages do then
    )
    forget_connections()
    cache.clear()  # no refill request of an earlier test still throttles this test's requests
    yield url
    app.conf.update(saved)
    forget_connections()
