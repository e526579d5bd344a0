"""What an attacker or a careless user can send: JSON errors under /api/, no 500s, no remote loads, HTTPS settings."""

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from annotate.models import Judgement

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def staff_api(staff):
    client = APIClient()
    client.force_authenticate(staff)
    return client


@pytest.fixture
def annotator_api(annotator):
    client = APIClient()
    client.force_authenticate(annotator)
    return client


def assert_json_error(response, status):
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert body.get("detail") or body.get("errors"), body


# --- Every 4xx under /api/ is JSON with a reason ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/no-such-endpoint/",
        "/api/exports/not-a-number/",
        "/api/exports/not-a-number/download/",
        "/api/rounds/1e3/",
        "/api/model-versions/abc/serve/",
        "/api/",
        "/api/exports/999999/",  # numeric, but no such export
    ],
)
def test_unknown_api_addresses_are_a_json_404(staff_api, path):
    assert_json_error(staff_api.get(path), 404)


def test_pages_keep_html_error_pages(client, staff):
    client.force_login(staff)
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")
    missing_export = client.get("/data/exports/999999/")
    assert missing_export.status_code == 404 and missing_export["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(("method", "path"), [("put", "/api/pairs/next/"), ("delete", "/api/judgements/"),
                                              ("get", "/api/judgements/"), ("patch", "/api/exports/")])  # fmt: skip
def test_wrong_methods_are_a_json_405(staff_api, method, path):
    assert_json_error(getattr(staff_api, method)(path), 405)


def test_an_over_large_body_is_a_json_413_and_changes_nothing(annotator_api, make_pair, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    pair = make_pair()
    body = {"pair": pair.pk, "choice": "left", "strength": 1, "idempotency_key": str(uuid.uuid4())}
    response = annotator_api.post("/api/judgements/", {**body, "rationale": "x" * 20_000}, format="json")
    assert_json_error(response, 413)
    assert not Judgement.objects.exists()


def test_too_many_form_fields_is_a_json_400(staff_api, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    body = "&".join(f"field{number}=1" for number in range(50))
    response = staff_api.post("/api/prompts/", body, content_type="application/x-www-form-urlencoded")
    assert_json_error(response, 400)


def test_json_nested_too_deeply_is_a_json_400(annotator_api):
    body = "[" * 100_000 + "]" * 100_000
    response = annotator_api.post("/api/judgements/", body, content_type="application/json")
    assert_json_error(response, 400)


def test_an_over_large_form_on_a_page_keeps_an_html_400(client, annotator, make_pair, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    pair = make_pair()
    client.force_login(annotator)
    response = client.post(f"/pairs/{pair.pk}/judge/", {"choice": "left", "rationale": "x" * 20_000})
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
    assert not Judgement.objects.exists()


# --- No 500 from anything a user can send ----------------------------------------------------------------------

HOSTILE_QUERIES = ["x=%00", "page=%00", "page=99999999999999999999999", "page=-1", "page_size=0",
                   "page_size=99999999999999999999", "next=%00", "pair=%00", "pair=99999999999999999999999",
                   "date_from=%00", "active=%00", "status=%00", "annotator=a%00b", "file=%00"]  # fmt: skip


def _get_paths():
    """Every GET address without arguments, and those with an id filled with a huge and a missing value."""
    from annotate.urls import urlpatterns

    paths = []
    for pattern in urlpatterns:
        route = str(pattern.pattern)
        if route.startswith("admin/"):
            continue
        for filled in {re.sub(r"<int:\w+>", "1", route), re.sub(r"<int:\w+>", "9" * 25, route)}:
            paths.append("/" + filled)
    return sorted(set(paths))


@pytest.mark.parametrize("path", _get_paths())
def test_hostile_query_strings_never_give_a_server_error(client, staff, path, make_pair):
    make_pair()
    client.force_login(staff)
    for query in HOSTILE_QUERIES:
        response = client.get(f"{path}?{query}")
        assert response.status_code < 500, (path, query, response.status_code)
        if path.startswith("/api/") and 400 <= response.status_code < 500:
            assert response["Content-Type"].startswith("application/json"), (path, query)


@pytest.mark.parametrize("login_path", ["/accounts/login/", "/admin/login/"])
@pytest.mark.parametrize("field", ["username", "password"])
def test_a_nul_in_the_login_form_is_a_form_error(client, annotator, login_path, field):
    fields = {"username": "ann", "password": "ann-password-1", field: "ann\x00-password-1"}
    response = client.post(login_path, fields)
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_a_nul_in_the_vote_form_and_bad_keys_change_nothing(client, annotator, make_pair):
    pair = make_pair()
    client.force_login(annotator)
    client.get("/")
    for fields in (
        {"choice": "left\x00", "idempotency_key": str(uuid.uuid4())},
        {"choice": "left", "strength": "\x00", "idempotency_key": str(uuid.uuid4())},
        {"choice": "tie", "idempotency_key": "not-a-uuid\x00"},
        {"choice": "tie", "idempotency_key": "0" * 1000},
    ):
        response = client.post(f"/pairs/{pair.pk}/judge/", fields)
        assert response.status_code == 400, fields
    for path in (f"/pairs/{'9' * 25}/judge/", f"/pairs/{'9' * 25}/skip/"):
        assert client.post(path, {"choice": "tie", "idempotency_key": str(uuid.uuid4())}).status_code < 500
    assert not Judgement.objects.exists()


def test_bad_uuids_and_huge_numbers_in_the_api_are_a_400(annotator_api, make_pair):
    pair = make_pair()
    for body in (
        {"pair": pair.pk, "choice": "tie", "idempotency_key": "not-a-uuid"},
        {"pair": pair.pk, "choice": "tie", "idempotency_key": "\x00"},
        {"pair": 9 * 10**30, "choice": "tie", "idempotency_key": str(uuid.uuid4())},
        {"pair": pair.pk, "choice": "left", "strength": 10**30, "idempotency_key": str(uuid.uuid4())},
    ):
        assert_json_error(annotator_api.post("/api/judgements/", body, format="json"), 400)
    assert_json_error(annotator_api.post("/api/pairs/skip/", {"pair": 10**30}, format="json"), 400)
    assert not Judgement.objects.exists()


# --- Model output loads nothing from outside --------------------------------------------------------------------

REMOTE_IMAGE = "![tracking pixel](https://tracker.example/pixel.png)"
PROTOCOL_RELATIVE_IMAGE = "![](//tracker.example/leak.png)"


def test_images_in_answers_prompts_and_earlier_turns_render_as_links(client, annotator, make_pair):
    make_pair(
        texts=(f"Left {REMOTE_IMAGE}", f"Right {PROTOCOL_RELATIVE_IMAGE}"),
        messages=[
            {"role": "user", "content": f"First {REMOTE_IMAGE}"},
            {"role": "assistant", "content": f"Earlier turn {REMOTE_IMAGE} {PROTOCOL_RELATIVE_IMAGE}"},
            {"role": "user", "content": "<img src=https://tracker.example/raw.png>"},
        ],
    )
    client.force_login(annotator)
    html = client.get("/").content.decode()

    assert "tracker.example" in html  # the content is there...
    assert "<img" not in html  # ...but as links and text, never an image
    assert '<a href="https://tracker.example/pixel.png" rel="noopener noreferrer nofollow">tracking pixel</a>' in html
    assert '<a href="//tracker.example/leak.png" rel="noopener noreferrer nofollow">' in html


def test_the_licence_on_an_export_card_loads_nothing(client, staff, make_pair, settings, tmp_path):
    settings.EXPORT_DIR = tmp_path
    make_pair()
    call_command("export_preferences", "--format", "trl-preference", "--license", f"mit {REMOTE_IMAGE}")
    client.force_login(staff)
    html = client.get("/data/exports/").content.decode()
    export_id = re.search(r'href="/data/exports/(\d+)/"', html).group(1)
    card = client.get(f"/data/exports/{export_id}/").content.decode()
    assert "tracker.example/pixel.png" in card
    assert "<img" not in card


def test_every_page_and_api_answer_carries_the_content_security_policy(client, annotator, staff_api):
    client.force_login(annotator)
    for response in (client.get("/"), client.get("/accounts/login/"), staff_api.get("/api/pairs/"),
                     client.get("/api/docs/"), client.get("/healthz")):  # fmt: skip
        policy = dict(directive.strip().split(" ", 1) for directive in response["Content-Security-Policy"].split(";"))
        assert policy["default-src"] == "'self'"
        assert policy["script-src"] == "'self'"  # no inline script, no eval
        assert "unsafe-inline" not in policy["style-src"] and "http" not in policy["style-src"]
        assert policy["img-src"] == "'self' data:"
        assert policy["object-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
        assert policy["base-uri"] == "'self'" and policy["form-action"] == "'self'"


def test_the_api_docs_page_runs_no_inline_script_and_its_one_inline_style_is_hashed(client):
    import base64
    import hashlib

    html = client.get("/api/docs/").content.decode()
    assert re.findall(r"<script>", html) == []
    (style,) = re.findall(r"<style>(.*?)</style>", html, flags=re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in client.get("/api/docs/")["Content-Security-Policy"]
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.content.decode()


# --- HTTPS settings: check --deploy --------------------------------------------------------------------------

PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "a-production-key-" + "k7Q2xV9pL4mN8rT1wZ5yB3cF6hJ0" * 2,
    "SECURE_COOKIES": "true",
    "ALLOWED_HOSTS": "pairloop.example.org",
}


def _manage(*arguments, env, cwd=REPO):
    """manage.py in a new process with only these variables, as a deployment would start it (not the test's)."""
    return subprocess.run(
        [sys.executable, "manage.py", *arguments], cwd=cwd, env={"PATH": os.environ["PATH"], **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_check_deploy_is_clean_with_the_production_variables(tmp_path):
    production = {**PRODUCTION, "PAIRLOOP_VAR_DIR": str(tmp_path)}
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=production)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout

    without_https = _manage(
        "check", "--deploy", "--fail-level", "WARNING",
        env={**PRODUCTION, "SECURE_COOKIES": "false", "PAIRLOOP_VAR_DIR": str(tmp_path)},
    )  # fmt: skip
    assert without_https.returncode != 0
    assert "security.W004" in without_https.stderr and "security.W012" in without_https.stderr


def test_secure_cookies_turn_on_hsts_and_the_https_redirect(client, settings):
    settings.SECURE_HSTS_SECONDS, settings.SECURE_SSL_REDIRECT = 31_536_000, True
    assert client.get("/accounts/login/").status_code == 301  # plain HTTP goes to HTTPS
    assert client.get("/healthz").status_code == 200  # load balancers probe over HTTP
    secure = client.get("/accounts/login/", secure=True)
    assert secure["Strict-Transport-Security"].startswith("max-age=31536000")


# --- Guessing passwords and tokens -----------------------------------------------------------------------------


@pytest.fixture
def failure_limit(settings):
    settings.AXES_FAILURE_LIMIT = 5
    return 5


@pytest.mark.parametrize("login_path", ["/accounts/login/", "/admin/login/"])
def test_thirty_wrong_passwords_lock_the_user_out(client, staff, failure_limit, login_path):
    answers = [client.post(login_path, {"username": "sam", "password": f"guess-{n}"}).status_code for n in range(30)]

    assert answers[: failure_limit - 1] == [200] * (failure_limit - 1)  # the form again, with its error
    assert set(answers[failure_limit:]) == {429}
    locked = client.post(login_path, {"username": "sam", "password": "sam-password-1"})  # even the right one
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    assert "_auth_user_id" not in client.session


def test_one_address_is_locked_out_whatever_usernames_it_tries(client, annotator, failure_limit):
    for number in range(failure_limit):
        client.post("/accounts/login/", {"username": f"user{number}", "password": "guess"}, REMOTE_ADDR="10.0.0.7")
    attacker = client.post(
        "/accounts/login/", {"username": "ann", "password": "ann-password-1"}, REMOTE_ADDR="10.0.0.7"
    )
    assert attacker.status_code == 429
    # Another address still logs in as that user: the address was locked, not the account.
    elsewhere = client.post(
        "/accounts/login/", {"username": "ann", "password": "ann-password-1"}, REMOTE_ADDR="10.0.0.8"
    )
    assert elsewhere.status_code == 302


def test_a_locked_user_is_refused_from_every_address_until_unlocked(client, annotator, failure_limit):
    for number in range(failure_limit):
        client.post("/accounts/login/", {"username": "ann", "password": "guess"}, REMOTE_ADDR=f"10.0.1.{number}")
    right = {"username": "ann", "password": "ann-password-1"}
    assert client.post("/accounts/login/", right, REMOTE_ADDR="10.0.2.1").status_code == 429

    call_command("axes_reset_username", "ann")  # what the README tells staff to run (or the admin's Axes pages)

    assert client.post("/accounts/login/", right, REMOTE_ADDR="10.0.2.1").status_code == 302


def test_an_admin_sees_and_unlocks_lockouts_in_the_admin(client, django_user_model, annotator, failure_limit):
    from axes.models import AccessAttempt

    for _ in range(failure_limit):
        client.post("/accounts/login/", {"username": "ann", "password": "guess"}, REMOTE_ADDR="10.0.3.1")
    admin = django_user_model.objects.create_superuser("root", password="root-password-1")
    client.force_login(admin)
    listing = client.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200 and "ann" in listing.content.decode()
    attempt = AccessAttempt.objects.get(username="ann")
    deleted = client.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    client.logout()
    right = {"username": "ann", "password": "ann-password-1"}
    assert client.post("/accounts/login/", right, REMOTE_ADDR="10.0.3.2").status_code == 302


@pytest.fixture
def throttle_rates(monkeypatch):
    """DRF reads its rates once, at import: set them where its throttles look. The throttles count in windows aligned
    to the clock, so their clock is held a second into an hour: a window's edge between two of a test's requests
    started a new count (the anonymous requests of the per-address test were all served once, a minute turning)."""
    import time
    import types

    from rest_framework.throttling import SimpleRateThrottle

    from annotate.web import throttling

    held = (int(time.time()) // 3600) * 3600 + 1.0
    monkeypatch.setattr(throttling, "time", types.SimpleNamespace(time=lambda: held))

    def set_rate(scope, rate):
        monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, scope, rate)

    return set_rate


def test_wrong_tokens_from_one_address_are_throttled(throttle_rates, annotator, make_pair):
    from rest_framework.authtoken.models import Token

    throttle_rates("token_failures", "5/hour")
    make_pair()
    guesser = APIClient(REMOTE_ADDR="10.0.4.1")
    answers = []
    for number in range(8):
        guesser.credentials(HTTP_AUTHORIZATION=f"Token guess{number:036d}")
        answers.append(guesser.get("/api/pairs/next/").status_code)
    assert answers == [401] * 5 + [429] * 3
    # Even a right token is refused from that address for now; another address is served.
    token = Token.objects.create(user=annotator)
    guesser.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    refused = guesser.get("/api/pairs/next/")
    assert_json_error(refused, 429)
    other = APIClient(REMOTE_ADDR="10.0.4.2")
    other.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert other.get("/api/pairs/next/").status_code == 200


def test_api_requests_are_rate_limited_per_user_and_per_anonymous_address(throttle_rates, annotator):
    throttle_rates("user", "3/minute")
    throttle_rates("anon", "2/minute")
    client = APIClient()
    client.force_authenticate(annotator)
    answers = [client.get("/api/pairs/next/").status_code for _ in range(5)]
    assert answers == [204, 204, 204, 429, 429]
    anonymous = [APIClient().get("/api/schema/").status_code for _ in range(3)]
    assert anonymous == [200, 200, 429]


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/quality/annotators/%00/"),
        ("post", "/api/annotators/%00/actions/"),
        ("get", "/admin/annotate/prompt/?prompt_set=%00"),
        ("get", "/api/pairs/?prompt_set=a%00b"),
        ("get", "/rounds/%00/"),
    ],
)
def test_a_nul_in_the_address_is_a_400_on_every_database(client, staff, method, path):
    """PostgreSQL refuses text with a NUL in it: a NUL in a path segment or a filter used to end in a 500 there."""
    client.force_login(staff)
    response = getattr(client, method)(path)
    assert response.status_code == 400, (path, response.status_code)
    if path.startswith("/api/"):
        assert response["Content-Type"].startswith("application/json")
