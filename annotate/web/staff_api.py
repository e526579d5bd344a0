"""What every staff endpoint shares: pagination, filters, the staff user, the schema's common answers.

The endpoints live with their areas (data, rounds, annotation, quality). Every staff endpoint is staff only
(IsAdminUser): annotator tokens get 403 and can only use the annotation endpoints of annotate/annotation/api.py.
Lists are paginated (?page=, ?page_size=).
"""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet
from drf_spectacular.utils import (
    OpenApiResponse,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response


class DataPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 1000

    def __init__(self) -> None:
        self.page_size = settings.API_PAGE_SIZE


def page_of(item: type[serializers.Serializer[Any]]) -> serializers.Serializer[Any]:
    """The schema of a paginated list of `item`."""
    return inline_serializer(
        name=f"{item.__name__}Page",
        fields={
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item(many=True),
        },
    )


def paginated(request: Request, queryset: QuerySet[Any], item: type[serializers.Serializer[Any]]) -> Response:
    paginator = DataPagination()
    page = paginator.paginate_queryset(queryset, request)
    return paginator.get_paginated_response(item(page, many=True, context={"request": request}).data)


def query_of(request: Request, filter_class: type[serializers.Serializer[Any]]) -> dict[str, Any]:
    query = filter_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return {name: value for name, value in query.validated_data.items() if value not in (None, "")}


def staff_of(request: Request) -> User:
    return cast(User, request.user)  # IsAdminUser let only staff through


NOT_STAFF = OpenApiResponse(description="Not logged in (401) or not staff (403).")
BAD_FILTERS = OpenApiResponse(description="Bad filters, named in `errors`.")


PAGE_PARAMETERS = [
    {"name": "page", "in": "query", "required": False, "description": "Which page, from 1.",
     "schema": {"type": "integer", "minimum": 1}},
    {"name": "page_size", "in": "query", "required": False,
     "description": f"Items a page (API_PAGE_SIZE when left out; at most {DataPagination.max_page_size}).",
     "schema": {"type": "integer", "minimum": 1, "maximum": DataPagination.max_page_size}},
]  # fmt: skip


NO_SUCH_PAGE = {
    "description": "No such page (past the last, or not a page number).",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def schema_add_page_parameters(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every list answered with a page (`page_of`) takes ?page= and
    ?page_size=, which function views do not declare themselves."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            answer = operation.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
            if answer.get("schema", {}).get("$ref", "").endswith("Page"):
                known = {parameter["name"] for parameter in operation.get("parameters", [])}
                added = [dict(parameter) for parameter in PAGE_PARAMETERS if parameter["name"] not in known]
                operation["parameters"] = [*operation.get("parameters", []), *added]
                operation["responses"].setdefault("404", NO_SUCH_PAGE)
    return result
