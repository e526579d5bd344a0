"""The API does what the staff pages do, and its OpenAPI schema describes exactly what is served."""

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

# The same staff client and votes enough for a round as the round pages' tests.
from .test_round_views import enough_votes, staff_api  # noqa: F401

pytestmark = pytest.mark.django_db


# --- Rounds: the list the rounds page shows ---------------------------------------------------------------------


def test_rounds_are_listed_newest_first_with_filters_and_pages(staff_api, enough_votes, serving_version):  # noqa: F811
    first = staff_api.post("/api/rounds/", {"max_steps": 2}, format="json").json()
    assert staff_api.post(f"/api/rounds/{first['id']}/cancel/").json()["status"] == "cancelled"
    second = staff_api.post("/api/rounds/", {}, format="json").json()

    listed = staff_api.get("/api/rounds/")
    assert listed.status_code == 200
    body = listed.json()
    assert body["count"] == 2
    assert [item["id"] for item in body["results"]] == [second["id"], first["id"]]
    newest = body["results"][0]
    assert newest["status"] == "queued" and newest["trigger"] == "api" and newest["started_by"] == "sam"
    assert newest["parent_version"] == serving_version.name and "log_tail" not in newest

    def ids(query: str) -> list[int]:
        return [item["id"] for item in staff_api.get(f"/api/rounds/?{query}").json()["results"]]

    assert ids("status=cancelled") == [first["id"]]
    assert ids("active=true") == [second["id"]]
    assert ids("active=false") == [first["id"]]
    assert ids("trigger=page") == []
    page = staff_api.get("/api/rounds/?page_size=1&page=2").json()
    assert [item["id"] for item in page["results"]] == [first["id"]] and page["next"] is None


def test_rounds_list_refuses_bad_filters_and_non_staff(staff_api, annotator, enough_votes):  # noqa: F811
    response = staff_api.get("/api/rounds/?status=<script>&trigger=nope")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"status", "trigger"}
    assert response["Content-Type"] == "application/json"  # the value echoed back is data, never markup
    assert APIClient().get("/api/rounds/").status_code == 401
    api = APIClient()
    api.force_authenticate(annotator)
    assert api.get("/api/rounds/").status_code == 403


# --- The schema matches what is served --------------------------------------------------------------------------


def _api_routes(patterns=None, prefix=""):
    """(OpenAPI path, methods) for every URL pattern under /api/, as drf-spectacular writes paths."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            yield from _api_routes(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            route = "/" + prefix + str(entry.pattern)
            if not route.startswith("/api/"):
                continue
            view_class = getattr(entry.callback, "cls", None)
            methods = {
                method
                for method in ("get", "post", "put", "patch", "delete")
                if view_class is not None and hasattr(view_class, method)
            }
            yield re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route), methods


# The schema and its browsable page describe the API; they are not operations of it.
NOT_OPERATIONS = {"/api/schema/", "/api/docs/"}


def test_every_api_route_is_in_the_schema_with_its_methods_and_nothing_else():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    described = {path: {method for method in item if method != "parameters"} for path, item in schema["paths"].items()}
    served = {path: methods for path, methods in _api_routes() if path not in NOT_OPERATIONS}
    assert served == described


def test_the_served_schema_lists_the_rounds_list(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/rounds/"]["get"]
    assert operation["operationId"] == "rounds_list"
    assert {parameter["name"] for parameter in operation["parameters"]} >= {"status", "trigger", "active", "page"}
