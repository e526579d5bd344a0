"""What every HTML view shares: the request type, the staff check, and "the page, or its fragment for htmx"."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django_htmx.middleware import HtmxDetails


class AppRequest(HttpRequest):
    """A request as the views see it: logged in (login_required) and with htmx details (the middleware)."""

    user: User
    htmx: HtmxDetails


def staff_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Logged in (else the login page) and staff (else 403): the one staff check of the HTML views."""

    @wraps(view)
    def checked(request: AppRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_staff:
            raise PermissionDenied("staff only")
        return view(request, *args, **kwargs)

    return login_required(checked)


def render_page(
    request: AppRequest, template_name: str, fragment: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    """The whole page, or only its `fragment` (a template partial) when htmx asks for it."""
    name = f"{template_name}#{fragment}" if request.htmx else template_name
    return render(request, name, context, status=status)
