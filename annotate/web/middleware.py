"""Requests no view should see."""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, HttpResponseBase


class NulCharacterInRequest(SuspiciousOperation):
    """A NUL character in the path or the query string: no name or filter value has one, and PostgreSQL refuses to
    compare text with it (a 500 where the user sent a bad address)."""


def refuse_nul_characters(get_response: Callable[[HttpRequest], HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """400 (JSON under /api/, Django's error page elsewhere) for a NUL character anywhere in the address."""

    def middleware(request: HttpRequest) -> HttpResponseBase:
        if "\x00" in request.path or "\x00" in request.path_info or "%00" in request.META.get("QUERY_STRING", ""):
            raise NulCharacterInRequest("the address contains a NUL character")
        if any("\x00" in value for values in request.GET.lists() for value in values[1]):
            raise NulCharacterInRequest("the query string contains a NUL character")
        return get_response(request)

    return middleware
