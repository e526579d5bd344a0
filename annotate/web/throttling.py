"""Guessing passwords and tokens: django-axes counts wrong logins; wrong API tokens are counted per address here."""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.http import HttpRequest
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle


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


class TokenFailureThrottle(SimpleRateThrottle):
    """Wrong tokens from one address, at most the `token_failures` rate; only failures are counted."""

    scope = "token_failures"
    # Set by SimpleRateThrottle.__init__ from the rate; the stubs do not declare them.
    num_requests: int
    duration: int

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def _history(self, request: Request) -> list[float]:
        self.key = self.get_cache_key(request, None)
        self.now = self.timer()
        history: list[float] = [moment for moment in cache.get(self.key, []) if moment > self.now - self.duration]
        self.history = history
        return history

    def exhausted(self, request: Request) -> bool:
        return len(self._history(request)) >= self.num_requests

    def record_failure(self, request: Request) -> None:
        history = self._history(request)
        history.insert(0, self.now)
        cache.set(self.key, history, self.duration)


class ThrottledTokenAuthentication(TokenAuthentication):
    """Token authentication that refuses (429) an address once it sent too many wrong tokens.

    DRF checks its throttles only after authentication succeeded, so a wrong token (401) would never be throttled.
    """

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        if not get_authorization_header(request):
            return None
        throttle = TokenFailureThrottle()
        if throttle.exhausted(request):
            raise Throttled(wait=throttle.wait(), detail="Too many wrong tokens from this address; try again later.")
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            throttle.record_failure(request)
            raise
