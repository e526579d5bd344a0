"""Rate limits that hold under concurrency: the API's per-user and per-address throttles, and wrong API tokens per
address; django-axes counts wrong logins.

DRF's own throttles keep a list of request times in the cache, read and written back by each request: concurrent
requests overwrite each other's entries, so many more than the rate get through. These count in fixed windows with
an increment that is atomic where the count lives (rate_count).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from axes.backends import AxesStandaloneBackend
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import caches
from django.core.cache.backends.db import DatabaseCache
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import HttpRequest
from django.utils import timezone
from redis.exceptions import RedisError
from rest_framework import throttling
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from annotate.models import RateCount

logger = logging.getLogger(__name__)


def rate_count(key: str, *, seconds: int, by: int = 1) -> int:
    """Add `by` to the count under `key` (kept at least `seconds`) and return the new count, atomically.

    Redis (CACHE_URL) increments in the server (INCRBY). The database cache's `incr` reads and then writes, so with
    it the count is a row updated with F() inside a transaction, which also makes the count read back our own."""
    cache = caches["default"]
    if isinstance(cache, DatabaseCache):
        return _database_count(key, seconds=seconds, by=by)
    try:
        cache.add(key, 0, timeout=seconds)
        try:
            return int(cache.incr(key, by))
        except ValueError:  # expired between add and incr
            cache.add(key, 0, timeout=seconds)
            return int(cache.incr(key, by))
    except RedisError as error:
        # Redis restarting must not turn every API request into a 500, nor refuse annotators' votes: while the
        # count cannot be kept, nothing is counted and the request goes on (a limit is a guard, not the service).
        logger.warning("rate count %s not kept, the cache is unreachable: %s", key.split(":", 1)[0], error)
        return 0


def _database_count(key: str, *, seconds: int, by: int) -> int:
    now = timezone.now()
    with transaction.atomic():
        if not RateCount.objects.filter(key=key).update(count=F("count") + by):
            try:
                with transaction.atomic():
                    RateCount.objects.create(key=key, count=by, expires_at=now + timedelta(seconds=seconds))
            except IntegrityError:  # another request made it first
                RateCount.objects.filter(key=key).update(count=F("count") + by)
            else:
                RateCount.objects.filter(expires_at__lt=now).delete()  # once per key and window: old windows go
        return RateCount.objects.filter(key=key).values_list("count", flat=True).get()


class AtomicRateThrottle(SimpleRateThrottle):
    """At most `num_requests` in each window of `duration` seconds (windows aligned to the clock, so a burst at a
    window's edge can reach twice the rate for a moment: the price of a count that never loses an increment)."""

    # Set by SimpleRateThrottle.__init__ from the rate; the stubs do not declare them.
    num_requests: int
    duration: int

    def _window_key(self, key: str) -> str:
        self.window_end = (int(time.time()) // self.duration + 1) * self.duration
        return f"{key}:{self.window_end}"

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        return rate_count(self._window_key(key), seconds=self.duration) <= self.num_requests

    def wait(self) -> float:
        return max(0.0, self.window_end - time.time())


class UserRateThrottle(AtomicRateThrottle, throttling.UserRateThrottle):
    """API_THROTTLE_USER per user (per address for anonymous requests)."""


class AnonRateThrottle(AtomicRateThrottle, throttling.AnonRateThrottle):
    """API_THROTTLE_ANON per address, for anonymous requests."""


class LoginAttemptsBackend(AxesStandaloneBackend):
    """django-axes' lockout check for every login that comes with a request (the login pages, the admin's).

    `authenticate()` without a request (Django's test client `login()`, code that checks a password) is no HTTP
    login anyone can repeat from outside, so there is nothing to count; axes would refuse it outright.
    """

    def authenticate(  # type: ignore[override]
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> AbstractBaseUser | None:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


class TokenFailureThrottle(AtomicRateThrottle):
    """Wrong tokens from one address, at most the `token_failures` rate.

    Every token is counted before it is checked and a right one is taken off again, so concurrent guesses cannot all
    be checked before the first wrong one is counted."""

    scope = "token_failures"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def attempt(self, request: Request) -> bool:
        """Count a token about to be checked; False when this address has had too many wrong ones."""
        self.counted_key = self._window_key(self.get_cache_key(request, None))
        return rate_count(self.counted_key, seconds=self.duration) <= self.num_requests

    def forgive(self) -> None:
        """The token was right: it does not count."""
        rate_count(self.counted_key, seconds=self.duration, by=-1)


class ThrottledTokenAuthentication(TokenAuthentication):
    """Token authentication that refuses (429) an address once it sent too many wrong tokens.

    DRF checks its throttles only after authentication succeeded, so a wrong token (401) would never be throttled.
    """

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        if not get_authorization_header(request):
            return None
        throttle = TokenFailureThrottle()
        if not throttle.attempt(request):
            raise Throttled(wait=throttle.wait(), detail="Too many wrong tokens from this address; try again later.")
        result = super().authenticate(request)  # AuthenticationFailed: the attempt stays counted
        throttle.forgive()
        return result
