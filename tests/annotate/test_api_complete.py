"""The API does what the staff pages do, and its OpenAPI schema describes exactly what is served."""

import json
import re
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from django.core.wsgi import get_wsgi_application
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate import tasks
from annotate.celery import app as celery_app
from annotate.models import Judgement, ModelVersion
from tests.readme import README

# The same staff client and votes enough for a round as the round pages' tests.
from .edges import FakeModelServer
from .test_api_fuzz import keep_the_test_transaction  # noqa: F401 (the WSGI handler must not close it)
from .test_round_views import enough_votes, staff_api  # noqa: F401
from .test_sampling_claims import RefillQueue

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


# --- README's Python example runs a campaign end to end ---------------------------------------------------------


class SamplingModelServer(FakeModelServer):
    """The round tests' fake vLLM server, answering chat requests too (each answer names its seed, so twins
    differ)."""

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path != "/v1/chat/completions":
            return super().handle(path, body)
        text = f"Answer {body['seed']} to {body['messages'][-1]['content'][:40]}"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return 200, {"id": f"chat-{body['seed']}", "object": "chat.completion", "model": body["model"],
                     "choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 5}}  # fmt: skip


@pytest.fixture
def model_server():
    return SamplingModelServer(max_lora_rank=16)


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return next(block for block in blocks if "def run_campaign" in block)


@pytest.mark.django_db(transaction=True)  # each request commits, and the work it hands to the workers runs then
def test_the_readme_example_runs_a_campaign_end_to_end(loop, staff, annotator, settings, tmp_path):
    """README's code, as written, against the app: httpx over WSGI, the workers' tasks run as they are sent (the
    broker is the one part left out), the fake model server samples and serves, the scripted trainer trains."""
    settings.EXPORT_DIR = tmp_path / "exports"
    example: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(readme_python_example(), "README.md", "exec"), example)
    # While the example waits, the sampling worker tops up the pairs, as beat has it do every PAIR_REFILL_INTERVAL.
    example["time"] = SimpleNamespace(sleep=lambda seconds: tasks.pairs_refill())
    app = httpx.WSGITransport(app=get_wsgi_application())

    def client_of(user) -> httpx.Client:
        token = Token.objects.create(user=user).key
        return httpx.Client(transport=app, base_url="http://testserver", headers={"Authorization": f"Token {token}"})

    celery_app.conf.task_always_eager = True
    try:
        result = example["run_campaign"](client_of(staff), client_of(annotator))
    finally:
        celery_app.conf.task_always_eager = False

    assert result["round"]["status"] == "serving", result["round"]["error"]
    assert [item["id"] for item in result["rounds"]["results"]] == [result["round"]["id"]]
    # Every vote the example cast is stored. The annotator is also open to the fixture's "default" prompts, whose
    # pairs the workers sample too, so some of the four may land there; the export holds exactly the "tips" ones.
    votes = Judgement.objects.filter(annotator=annotator)
    assert votes.count() == 4
    tips = votes.filter(pair__prompt__prompt_set="tips").count()
    rows = [json.loads(line) for line in result["dataset"].splitlines()]
    assert tips >= 1 and len(rows) == tips and all({"prompt", "chosen", "rejected"} <= set(row) for row in rows)
    assert result["leaderboard"]


# --- Annotators: the standing and decisions the annotator's quality page shows ----------------------------------


def test_an_annotators_standing_and_decisions(staff_api, annotator):  # noqa: F811
    assert staff_api.get("/api/annotators/ann/").json() == {
        "annotator": "ann", "paused": False, "votes_excluded": False, "decisions": [],
    }  # fmt: skip
    for action, reason in (("pause", "too fast"), ("exclude", "<script>x</script> all ties")):
        response = staff_api.post("/api/annotators/ann/actions/", {"action": action, "reason": reason}, format="json")
        assert response.status_code == 200

    body = staff_api.get("/api/annotators/ann/").json()
    assert body["paused"] and body["votes_excluded"]
    assert [(item["action"], item["reason"], item["by"]) for item in body["decisions"]] == [
        ("exclude", "<script>x</script> all ties", "sam"), ("pause", "too fast", "sam"),
    ]  # fmt: skip
    assert staff_api.get("/api/annotators/nobody/").status_code == 404
    api = APIClient()
    api.force_authenticate(annotator)
    assert api.get("/api/annotators/ann/").status_code == 403


# --- Serving a version asks for pairs from it, as the rounds page does -------------------------------------------


def test_serving_through_the_api_queues_a_refill(staff_api, serving_version, django_capture_on_commit_callbacks):  # noqa: F811
    other = ModelVersion.objects.create(name="other", base_model="/m")
    queue = RefillQueue()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert staff_api.post(f"/api/model-versions/{other.pk}/serve/").status_code == 200
        assert queue.waiting() == 1
    finally:
        queue.clear()
        queue.close()
