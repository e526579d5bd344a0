"""CACHE_URL: the database cache by default, Redis when given one, and a clear refusal otherwise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

REPO = Path(__file__).resolve().parent.parent.parent
SHOW_BACKEND = "from django.conf import settings; print(settings.CACHES['default']['BACKEND'])"


def _shell(cache_url: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "SECRET_KEY": "cache-test", "LOG_LEVEL": "WARNING", "CACHE_URL": cache_url}
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", SHOW_BACKEND],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_cache_url_picks_the_backend_and_refuses_what_it_cannot_use():
    assert _shell("").stdout.strip() == "django.core.cache.backends.db.DatabaseCache"
    assert _shell("redis://127.0.0.1:6379/3").stdout.strip() == "annotate.cache.ForgivingRedisCache"
    refused = _shell("memcached://127.0.0.1:11211")
    assert refused.returncode != 0
    assert "CACHE_URL='memcached://127.0.0.1:11211'" in refused.stderr


def _redis_url() -> str:
    """The Redis that CI (and the broker) uses; the test needs one, as the production setting does."""
    broker = os.environ.get("CELERY_BROKER_URL", "")
    base = broker if broker.startswith("redis://") else "redis://127.0.0.1:6379/0"
    url = urllib.parse.urlparse(base)
    try:
        socket.create_connection((url.hostname, url.port or 6379), timeout=2).close()
    except OSError:
        pytest.skip(f"no Redis at {url.hostname}:{url.port}; CI runs this with its Redis")
    return f"redis://{url.hostname}:{url.port or 6379}/14"


def _cache_queries(client: APIClient) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/api/pairs/next/")
    assert response.status_code in (200, 204), response.content[:300]
    return [
        query["sql"] for query in captured.captured_queries
        if "pairloop_cache" in query["sql"] or "annotate_ratecount" in query["sql"]
    ]  # fmt: skip


@pytest.mark.django_db
def test_with_redis_the_api_throttle_asks_the_database_nothing(annotator, make_pair, settings):
    make_pair()
    client = APIClient()
    client.force_authenticate(annotator)
    assert _cache_queries(client)  # with the database cache, the throttle counts in a table
    settings.CACHES = {"default": {"BACKEND": "annotate.cache.ForgivingRedisCache", "LOCATION": _redis_url()}}
    try:
        assert _cache_queries(client) == []
        # The throttle still counts this user's requests, now in Redis.
        redis = caches["default"]
        assert [key for key in redis._cache.get_client().keys("*") if f"throttle_user_{annotator.pk}:".encode() in key]
    finally:
        caches["default"].clear()
