"""The API's rate limits hold when requests come at once: with the database cache and with Redis, many threads on
one token get exactly the rate through, and concurrent wrong tokens are never checked past the limit."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from django.core.cache import caches
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from .conftest import run_in_threads

pytestmark = pytest.mark.django_db(transaction=True)

THREADS, EACH = 12, 8


@pytest.fixture(params=["database", "redis"])
def shared_cache(request, settings):
    """The two caches production may use: the database table (the default) and Redis (CACHE_URL)."""
    if request.param == "redis":
        url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
        settings.CACHES = {"default": {"BACKEND": "annotate.cache.ForgivingRedisCache", "LOCATION": url}}
        try:
            caches["default"].clear()
        except Exception as error:  # no Redis on this machine: only CI and development machines have one
            pytest.skip(f"no Redis at {url}: {error}")
    yield request.param
    caches["default"].clear()


@pytest.fixture
def throttle_rates(monkeypatch):
    from rest_framework.throttling import SimpleRateThrottle

    def set_rate(scope, rate):
        monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, scope, rate)

    return set_rate


def _in_threads(request) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()

    def job() -> None:
        for _ in range(EACH):
            status = request()
            with lock:
                statuses.append(status)

    run_in_threads([job] * THREADS)
    assert len(statuses) == THREADS * EACH
    return statuses


def test_one_token_from_many_threads_gets_exactly_the_rate(shared_cache, throttle_rates, annotator):
    throttle_rates("user", "30/hour")
    token = Token.objects.create(user=annotator)

    def request() -> int:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client.get("/api/pairs/next/").status_code

    statuses = _in_threads(request)
    assert statuses.count(429) == THREADS * EACH - 30
    assert sorted(set(statuses)) == [204, 429]


def test_concurrent_wrong_tokens_are_never_checked_past_the_limit(shared_cache, throttle_rates, annotator):
    throttle_rates("token_failures", "10/hour")
    statuses = _in_threads(
        lambda: (
            APIClient(REMOTE_ADDR="10.0.9.9", HTTP_AUTHORIZATION="Token " + "x" * 40)
            .get("/api/pairs/next/")
            .status_code
        )
    )
    assert statuses.count(401) == 10  # a 401 is a wrong token that was checked; the rest were refused unchecked
    assert statuses.count(429) == THREADS * EACH - 10


def test_a_redis_cache_that_is_down_lets_votes_through_instead_of_answering_500(settings, annotator, staff, caplog):
    """The chaos soak killed Redis (the cache) and three API requests answered 500 from the throttle's count; the
    refill request and the cached reports (leaderboard, quality) read and write the same cache."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    settings.CACHES = {
        "default": {
            "BACKEND": "annotate.cache.ForgivingRedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed}/0",
        }
    }
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=annotator).key}")
    assert client.get("/api/pairs/next/").status_code == 204  # no pair ready: answered, not a server error
    wrong = APIClient(REMOTE_ADDR="10.0.9.8", HTTP_AUTHORIZATION="Token " + "x" * 40)
    assert wrong.get("/api/pairs/next/").status_code == 401
    staff_client = APIClient()
    staff_client.force_authenticate(staff)
    assert staff_client.get("/api/leaderboard/").status_code == 200
    assert staff_client.get("/api/quality/").status_code == 200
    assert "the cache is unreachable" in caplog.text and "Redis is unreachable" in caplog.text
