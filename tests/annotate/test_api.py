import uuid

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.models import Assignment, Judgement

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(annotator):
    client = APIClient()
    client.force_authenticate(annotator)
    return client


def judgement_body(pair_id, **overrides):
    body = {
        "pair": pair_id,
        "choice": "left",
        "strength": 2,
        "rationale": "clearer",
        "idempotency_key": str(uuid.uuid4()),
    }
    return {**body, **overrides}


@pytest.mark.parametrize(("method", "path"), [("get", "/api/pairs/next/"), ("post", "/api/judgements/")])
def test_anonymous_requests_are_refused(method, path):
    response = getattr(APIClient(), method)(path, {}, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "detail" in response.json()


def test_token_authentication_works(annotator, make_pair):
    make_pair()
    token = Token.objects.create(user=annotator)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/pairs/next/").status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get("/api/pairs/next/").status_code == 401


def test_next_pair_shows_sides_as_leased(api, annotator, make_pair):
    pair = make_pair(texts=("alpha", "beta"))
    response = api.get("/api/pairs/next/")

    assert response.status_code == 200
    data = response.json()
    assignment = Assignment.objects.get(annotator=annotator)
    assert data["pair"] == pair.pk
    assert data["prompt"] == [{"role": "user", "content": "Question number 1?"}]
    assert (data["left"]["text"], data["right"]["text"]) == (
        ("alpha", "beta") if assignment.a_on_left else ("beta", "alpha")
    )
    assert data["lease_expires"].startswith(assignment.expires_at.strftime("%Y-%m-%dT%H:%M"))
    assert data["answers"] == []  # only a ranking pair (three or more answers) lists them
    assert set(data) == {"pair", "prompt", "left", "right", "lease_expires", "answers", "judge_hint"}
    assert data["judge_hint"] is None  # only when the campaign shows its AI judge's verdict


def test_next_pair_is_204_when_none_is_ready(api, serving_version):
    response = api.get("/api/pairs/next/")
    assert response.status_code == 204 and response.content == b""


def test_judgement_is_created_then_replayed_with_the_same_key(api, annotator, make_pair):
    pair = make_pair(required=2)
    api.get("/api/pairs/next/")
    body = judgement_body(pair.pk, choice="right", strength=3)

    created = api.post("/api/judgements/", body, format="json")
    replay = api.post("/api/judgements/", body, format="json")

    assert created.status_code == 201 and replay.status_code == 200
    assert created.json() == replay.json()
    data = created.json()
    assert (data["pair"], data["choice"], data["strength"], data["rationale"]) == (pair.pk, "right", 3, "clearer")
    assert data["choice_relative_to_pair"] == Judgement.objects.get().choice
    assert Judgement.objects.count() == 1


def test_judgement_on_a_pair_not_leased_to_you_is_a_409(api, other_annotator, make_pair):
    pair = make_pair()
    other = APIClient()
    other.force_authenticate(other_annotator)
    other.get("/api/pairs/next/")

    response = api.post("/api/judgements/", judgement_body(pair.pk), format="json")

    assert response.status_code == 409
    assert "not leased to you" in response.json()["detail"]
    assert Judgement.objects.count() == 0


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"choice": "middle"}, {"choice"}),
        ({"pair": "seven"}, {"pair"}),
        ({"idempotency_key": "abc"}, {"idempotency_key"}),
        ({"strength": None}, {"strength"}),
        ({"strength": 5}, {"strength"}),
        ({"choice": "both_bad", "strength": 1}, {"strength"}),
    ],
)
def test_invalid_fields_are_a_400_naming_them(api, make_pair, overrides, fields):
    pair = make_pair()
    api.get("/api/pairs/next/")
    response = api.post("/api/judgements/", judgement_body(pair.pk, **overrides), format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == fields
    assert Judgement.objects.count() == 0
    assert Assignment.objects.get().status == Assignment.Status.LEASED


def test_missing_fields_are_named(api):
    response = api.post("/api/judgements/", {}, format="json")
    assert response.status_code == 400
    assert {"pair", "choice", "idempotency_key"} <= set(response.json()["errors"])


def test_skip_through_the_api(api, make_pair):
    first, second = make_pair(), make_pair()
    assert api.get("/api/pairs/next/").json()["pair"] == first.pk
    assert api.post("/api/pairs/skip/", {"pair": first.pk}, format="json").status_code == 204
    assert api.get("/api/pairs/next/").json()["pair"] == second.pk
    assert api.post("/api/pairs/skip/", {"pair": first.pk}, format="json").status_code == 409


def test_html_and_api_share_one_queue(client, api, annotator, make_pair):
    make_pair()
    client.force_login(annotator)
    client.get("/")
    assert api.get("/api/pairs/next/").json()["pair"] == Assignment.objects.get().pair_id
    assert Assignment.objects.count() == 1


def test_openapi_schema_lists_the_annotation_endpoints(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/api/pairs/next/", "/api/judgements/", "/api/pairs/skip/"} <= set(paths)
