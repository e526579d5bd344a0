"""How every API error looks: JSON, with a `detail` and a `code`, or the bad fields named under `errors`.

DRF's views answer through `exception_handler`; what Django answers itself under /api/ (no such endpoint, a body
it refused to read, an error in a view) goes through the `handler*` views below, which keep Django's HTML pages
for every other address.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from annotate.errors import Conflict, Invalid

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"


def _refused_body(exc: Exception) -> tuple[str, str, int] | None:
    """The reason, code and status for a request body Django or the JSON parser refused to read, else None."""
    if isinstance(exc, RequestDataTooBig):
        return "The request body is larger than this server accepts.", "too_large", 413
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return "The request has more fields or files than this server accepts.", "too_many_fields", 400
    if isinstance(exc, RecursionError):
        # Python's JSON decoder gives up on very deep nesting this way; no request body of ours nests deeply.
        return "The request body is nested too deeply.", "too_deep", 400
    return None


def error_response(error: Invalid | Conflict) -> Response:
    """The one answer to a user's error (annotate.errors): 400 with the bad fields under `errors`, or 409 with the
    reason in `detail`, its `code` and whatever else the conflict carries (the id of what stands in the way)."""
    if isinstance(error, Invalid):
        return Response({"errors": error.errors}, status=status.HTTP_400_BAD_REQUEST)
    return Response({"detail": str(error), "code": error.code, **error.context}, status=status.HTTP_409_CONFLICT)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's errors, always as JSON with a `detail` or the fields named; a user's errors through `error_response`."""
    if isinstance(exc, Invalid | Conflict):
        set_rollback()  # as DRF does for its own errors, should the request run in a transaction
        return error_response(exc)
    refused = _refused_body(exc)
    if refused is not None:
        reason, code, status_code = refused
        return Response({"detail": reason, "code": code}, status=status_code)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, ValidationError):
        response.data = {"errors": response.data}
    return response


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not _is_api(request):
        return defaults.bad_request(request, exception)
    reason, code, status_code = _refused_body(exception) or ("The request could not be read.", "bad_request", 400)
    return JsonResponse({"detail": reason, "code": code}, status=status_code)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not _is_api(request):
        return defaults.permission_denied(request, exception)
    return JsonResponse({"detail": "You do not have permission to do this.", "code": "permission_denied"}, status=403)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not _is_api(request):
        return defaults.page_not_found(request, exception)
    return JsonResponse({"detail": "No API endpoint or object at this address.", "code": "not_found"}, status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if not _is_api(request):
        return defaults.server_error(request)
    return JsonResponse({"detail": "Server error; it was logged.", "code": "server_error"}, status=500)


# --- The schema: the errors every operation can answer -------------------------------------------------------------

ERROR_SCHEMA = {
    "type": "object",
    "description": "An error: a reason in `detail` (with a machine-readable `code`), or the bad fields in `errors`.",
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": True},
    },
}
_COMMON_ERRORS = {
    "401": "Not logged in, or a wrong token.",
    "403": "Not allowed for this user (most endpoints are staff only).",
    "429": "Too many requests (or wrong tokens) from this user or address; `Retry-After` says when to try again.",
    # Any request can be unreadable (a NUL character in its address), whatever its operation takes.
    "400": "The request could not be read, or invalid fields, named in `errors`.",
}
_BODY_ERRORS = {
    "400": "Invalid fields, named in `errors`.",
    "413": "The request body is larger than accepted.",
    "415": "The body's content type is not one this endpoint reads (JSON, a form, or multipart that parses).",
}


def schema_add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: document the JSON errors DRF and Django give on every operation
    (authentication, permission, throttling; 404 where the path names an object; 400 and 413 where there is a body
    or a query), keeping any description an operation gives itself."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result.get("paths", {}).items():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            errors = dict(_COMMON_ERRORS)
            if "{" in path:
                errors["404"] = "No such object."
            if "requestBody" in operation or operation.get("parameters"):
                errors.update(_BODY_ERRORS)
            for code, description in errors.items():
                response = operation["responses"].setdefault(code, {"description": description})
                response.setdefault("content", reference)
    return result
