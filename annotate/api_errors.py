"""How every API error looks: JSON, with a `detail` and a `code`, or the bad fields named under `errors`."""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotate.errors import Conflict, Invalid


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's errors, always as JSON with a `detail` or the fields named; annotation errors as 409 / 400."""
    if isinstance(exc, Invalid):
        return Response({"errors": exc.errors}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Conflict):
        return Response({"detail": str(exc), "code": exc.code}, status=status.HTTP_409_CONFLICT)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, ValidationError):
        response.data = {"errors": response.data}
    return response
