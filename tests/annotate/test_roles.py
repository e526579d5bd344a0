"""Who may call what: every URL pattern of the project, as anonymous, annotator and staff.

The list of patterns comes from the URLconf itself, so a new URL without an entry in ACCESS fails
`test_every_url_pattern_has_an_expectation` until someone decides who may call it. Every value a route takes is
a real object's, so a caller who may call a route must get through to its view: a 404 or a 405 fails the matrix.
"""

import re
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.data import exports, import_jobs
from annotate.data.exports import ExportFilters
from annotate.hooks import services as hooks
from annotate.judging import services as judging
from annotate.models import Campaign, DataImport, Export
from annotate.rounds import services as rounds
from annotate.turns import services as turns

from .voting import vote_as_annotator, vote_with_edit

pytestmark = pytest.mark.django_db

PUBLIC = "public"  # anyone
LOGOUT = "logout"  # anyone; it ends the session (if any) and redirects
ANNOTATOR_PAGE = "annotator page"  # logged in; anonymous: redirect to the login page
STAFF_PAGE = "staff page"  # staff; anonymous: login page; annotator: 403
ANNOTATOR_API = "annotator api"  # any token; anonymous: 401
STAFF_API = "staff api"  # staff tokens; anonymous: 401; annotator: 403
ADMIN = "admin"  # Django's admin: anonymous and annotators go to the admin's login page

# URL name (admin ones as "admin:NAME") -> (who may call it, the methods it serves).
ACCESS = {
    "annotate": (ANNOTATOR_PAGE, ["get"]),
    "judge": (ANNOTATOR_PAGE, ["post"]),
    "skip": (ANNOTATOR_PAGE, ["post"]),
    "rank": (ANNOTATOR_PAGE, ["post"]),
    "undo": (ANNOTATOR_PAGE, ["post"]),
    "next-turn": (ANNOTATOR_PAGE, ["post"]),
    "continuation-stream": (ANNOTATOR_PAGE, ["get"]),  # another's conversation: 409, as a pair not leased to you
    "continuation-later": (ANNOTATOR_PAGE, ["post"]),
    "continuation-retry": (ANNOTATOR_PAGE, ["post"]),  # one that has not failed: 409
    "login": (PUBLIC, ["get", "post"]),
    "sso-login": (PUBLIC, ["get"]),  # with single sign-on set up (route_values); 404 without
    "sso-callback": (PUBLIC, ["get"]),
    "logout": (LOGOUT, ["post"]),
    "api-pairs-next": (ANNOTATOR_API, ["get"]),
    "api-pairs-skip": (ANNOTATOR_API, ["post"]),
    "api-judgements": (ANNOTATOR_API, ["post"]),
    "api-judgements-undo": (ANNOTATOR_API, ["post"]),
    "api-conversations": (ANNOTATOR_API, ["post"]),
    "api-conversation": (ANNOTATOR_API, ["get"]),  # staff read any; an annotator only their own
    "rounds": (STAFF_PAGE, ["get"]),
    "round-start": (STAFF_PAGE, ["post"]),
    "round-detail": (STAFF_PAGE, ["get"]),
    "round-cancel": (STAFF_PAGE, ["get", "post"]),  # GET: the page that asks before cancelling
    "round-promote": (STAFF_PAGE, ["post"]),
    "round-canary-decide": (STAFF_PAGE, ["post"]),
    "version-serve": (STAFF_PAGE, ["post"]),
    "data-prompts-import": (STAFF_PAGE, ["get", "post"]),
    "data-preferences-import": (STAFF_PAGE, ["get", "post"]),
    "data-exports": (STAFF_PAGE, ["get", "post"]),
    "data-export": (STAFF_PAGE, ["get"]),
    "data-import": (STAFF_PAGE, ["get", "post"]),
    "data-export-download": (STAFF_PAGE, ["get"]),
    "api-prompts": (STAFF_API, ["get", "post"]),
    "api-prompts-import": (STAFF_API, ["post"]),
    "api-preferences-import": (STAFF_API, ["post"]),
    "api-pairs": (STAFF_API, ["get"]),
    "api-judgements-list": (STAFF_API, ["get"]),
    "api-model-versions": (STAFF_API, ["get"]),
    "api-version-serve": (STAFF_API, ["post"]),
    "api-rounds": (STAFF_API, ["get", "post"]),
    "api-round-detail": (STAFF_API, ["get"]),
    "api-round-cancel": (STAFF_API, ["post"]),
    "api-round-promote": (STAFF_API, ["post"]),
    "api-round-canary-decide": (STAFF_API, ["post"]),
    "api-exports": (STAFF_API, ["get", "post"]),
    "api-export": (STAFF_API, ["get"]),
    "api-import": (STAFF_API, ["get"]),
    "api-import-enqueue": (STAFF_API, ["post"]),
    "api-export-enqueue": (STAFF_API, ["post"]),
    "api-dashboard": (STAFF_API, ["get"]),
    "api-export-download": (STAFF_API, ["get"]),
    "start": (ANNOTATOR_PAGE, ["get"]),
    "dashboard": (STAFF_PAGE, ["get"]),
    "campaigns": (STAFF_PAGE, ["get", "post"]),
    "campaign-edit": (STAFF_PAGE, ["get", "post"]),
    "pair-detail": (STAFF_PAGE, ["get"]),
    "pair-gold": (STAFF_PAGE, ["post"]),
    "edit-review": (STAFF_PAGE, ["post"]),
    "leaderboard": (STAFF_PAGE, ["get"]),
    "quality": (STAFF_PAGE, ["get"]),
    "quality-annotator": (STAFF_PAGE, ["get"]),
    "quality-annotator-act": (STAFF_PAGE, ["post"]),
    "api-campaigns": (STAFF_API, ["get", "post"]),
    "api-campaign": (STAFF_API, ["get"]),
    "api-pair-gold": (STAFF_API, ["post"]),
    "api-edit-review": (STAFF_API, ["post"]),
    "api-annotator": (STAFF_API, ["get"]),
    "api-annotator-actions": (STAFF_API, ["post"]),
    "api-leaderboard": (STAFF_API, ["get"]),
    "api-quality": (STAFF_API, ["get"]),
    "webhooks": (STAFF_PAGE, ["get", "post"]),
    "webhook": (STAFF_PAGE, ["get"]),
    "webhook-test": (STAFF_PAGE, ["post"]),
    "webhook-active": (STAFF_PAGE, ["post"]),
    "webhook-delete": (STAFF_PAGE, ["post"]),
    "api-webhooks": (STAFF_API, ["get", "post"]),
    "api-webhook": (STAFF_API, ["get"]),
    "api-webhook-test": (STAFF_API, ["post"]),
    "api-webhook-deliveries": (STAFF_API, ["get"]),
    "campaign-judge": (STAFF_PAGE, ["get", "post"]),
    "campaign-judge-run": (STAFF_PAGE, ["post"]),
    "api-campaign-judge": (STAFF_API, ["get"]),  # PUT: tests/annotate/test_judging_pages.py (the matrix posts)
    "api-judge-verdicts": (STAFF_API, ["get"]),
    "api-judge-run": (STAFF_API, ["post"]),
    "healthz": (PUBLIC, ["get"]),
    "api-schema": (PUBLIC, ["get"]),
    "api-docs": (PUBLIC, ["get"]),
    "admin:login": (PUBLIC, ["get", "post"]),
    "admin:logout": (LOGOUT, ["post"]),
}
# Routes that take an uploaded file: the matrix posts to them as a form upload, the way their callers do.
MULTIPART = {"api-prompts-import", "api-preferences-import"}
ADMIN_DEFAULT = (ADMIN, ["get"])  # every other admin page: the admin protects all of its views the same way


def _fill(pattern) -> str:
    """A path template for a pattern: `{name}` where the route takes a value (filled with a real object's at test
    time), the first choice of a regex alternative."""
    if isinstance(pattern, RoutePattern):
        return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern))
    regex = pattern._regex if isinstance(pattern, RegexPattern) else str(pattern)
    regex = re.sub(r"\(\?P<\w+>([^|)]*)[^)]*\)", lambda match: match.group(1) or "x", regex)
    return regex.lstrip("^").rstrip("$").replace("\\", "")


def _patterns(patterns=None, prefix="", namespace=None):
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            yield from _patterns(entry.url_patterns, prefix + _fill(entry.pattern), entry.namespace or namespace)
        elif isinstance(entry, URLPattern):
            name = f"{namespace}:{entry.name}" if namespace else entry.name
            yield name, "/" + prefix + _fill(entry.pattern)


PATTERNS = sorted(set(_patterns()))
CASES = [
    (name, path, method)
    for name, path in PATTERNS
    for method in ACCESS.get(name, ADMIN_DEFAULT if name and name.startswith("admin:") else (None, ["get"]))[1]
]


def test_every_url_pattern_has_an_expectation():
    missing = [(name, path) for name, path in PATTERNS if name not in ACCESS and not (name or "").startswith("admin:")]
    assert missing == [], f"decide who may call these and add them to ACCESS: {missing}"
    assert not set(ACCESS) - {name for name, _ in PATTERNS}, "ACCESS names a URL that no longer exists"


def _call(client, method, path, name):
    if method == "get":
        return client.get(path)
    if isinstance(client, APIClient):
        return client.post(path, {}, format="multipart" if name in MULTIPART else "json")
    return client.post(path, {})


def _is_login_redirect(response, login_path):
    return response.status_code == 302 and response["Location"].startswith(login_path)


def _refusal_names_its_reason(response) -> bool:
    """A 400 or 409 from the view itself: the API names the fields or the reason in JSON (DRF's and our errors
    alike), a page is re-rendered as HTML with the message."""
    if response["Content-Type"].startswith("application/json"):
        body = response.json()
        return bool(body) and (response.status_code == 400 or bool(body.get("detail")))
    return response["Content-Type"].startswith("text/html") and b"<html" in response.content.lower()


def _allowed(response) -> bool:
    """The caller got through to the view: an answer (2xx), a redirect that is not to a login page (3xx), or the
    view's own refusal of the empty request the matrix sends: 400 for a form or body that is not valid, 409 when
    the object's state refuses the action, either naming its reason. Never a 404 or a 405: those say the route, the
    method or the object does not exist, which the matrix must see."""
    code = response.status_code
    if 200 <= code < 300:
        return True
    if 300 <= code < 400:
        return "/login/" not in response["Location"]
    return code in (400, 409) and _refusal_names_its_reason(response)


@pytest.fixture
def route_values(settings, tmp_path, make_pair, annotator, staff, django_user_model, serving_version):
    """A real object for every value a route takes, each made the way users make it (votes through the services, a
    round started by staff, an export run as its worker runs it), so a 404 can only mean a broken route. Admin pages
    get an id that exists nowhere: the admin answers a missing object with a redirect, the same for every model."""
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ROUND_MIN_TRAIN_PAIRS = 1
    settings.EXPORT_DIR = tmp_path / "exports"
    settings.OIDC_RP_CLIENT_ID, settings.OIDC_OP_ISSUER = "pairloop", "http://127.0.0.1:9"  # single sign-on set up
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = "http://127.0.0.1:9/authorize"  # nothing is asked of the provider
    voted = make_pair()
    voter = django_user_model.objects.create_user("voter")
    vote_as_annotator(voter, pair=voted)
    edited = make_pair()  # a vote with a better answer written: its campaign takes them
    Campaign.objects.filter(pk=edited.campaign_id).update(edits_allowed=True)
    written = vote_with_edit(voter, lambda _: "A better answer.", choice="both_bad").human_answer
    talked = make_pair()  # the annotator's vote, whose conversation they continue (annotate.turns)
    vote_as_annotator(annotator, pair=talked)
    talked.campaign.continuation_allowed = True
    talked.campaign.save()
    continuation = turns.continuation_start(
        annotator=annotator, pair_id=talked.pk, message="And then?", idempotency_key=uuid.uuid4()
    ).continuation
    pair = make_pair()  # still open: the annotator may be dealt it
    training_round = rounds.round_start(trigger="api", started_by=staff)
    export = exports.export_create(
        created_by=staff, dataset_format="trl-preference", file_format="jsonl", filters=ExportFilters()
    )
    export = exports.export_run(export=export)
    assert export.status == Export.Status.DONE
    upload = SimpleUploadedFile("prompts.txt", b"A question staff uploaded?\n")
    data_import, _ = import_jobs.data_import_request(
        created_by=staff, kind=DataImport.Kind.PROMPTS, upload=upload, file_format=None, options={"prompt_set": "roles"}
    )
    import_jobs.data_import_run(data_import=data_import)  # as its worker runs it
    endpoint = hooks.webhook_endpoint_create(
        url="http://127.0.0.1:9/hook", event_names=["vote.recorded"], allow_private=True, created_by=staff
    )
    judging.judge_configure(
        campaign=pair.campaign,
        values={"url": "http://127.0.0.1:9/v1", "model": "m", "allow_private": True, "enabled": True},
        app_hosts=[],
    )
    return {"pair_id": pair.pk, "campaign_id": pair.campaign_id, "round_id": training_round.pk,
            "version_id": serving_version.pk, "export_id": export.pk, "import_id": data_import.pk,
            "endpoint_id": endpoint.pk, "answer_id": written.pk, "continuation_id": continuation.pk,
            "username": annotator.username,
            "object_id": 999999, "id": 999999, "content_type_id": 999999}  # fmt: skip


@pytest.fixture
def clients(annotator, staff, client):
    def for_user(user, api):
        if user is None:
            return APIClient() if api else client
        if api:
            api_client = APIClient()
            api_client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
            return api_client
        client.force_login(user)
        return client

    return for_user


@pytest.mark.parametrize(("name", "path", "method"), CASES, ids=[f"{m.upper()} {p}" for _, p, m in CASES])
def test_the_role_matrix(clients, annotator, staff, route_values, name, path, method):
    access, _ = ACCESS.get(name, ADMIN_DEFAULT)
    api = access in (ANNOTATOR_API, STAFF_API)
    path = path.format(**route_values)

    anonymous = _call(clients(None, api), method, path, name)
    as_annotator = _call(clients(annotator, api), method, path, name)
    as_staff = _call(clients(staff, api), method, path, name)

    codes = [response.status_code for response in (anonymous, as_annotator, as_staff)]
    assert all(code < 500 for code in codes), codes
    if access == LOGOUT:
        assert set(codes) <= {200, 302}
    elif access == PUBLIC:
        assert all(_allowed(response) for response in (anonymous, as_annotator, as_staff)), codes
    elif access == ANNOTATOR_PAGE:
        assert _is_login_redirect(anonymous, "/accounts/login/")
        assert _allowed(as_annotator) and _allowed(as_staff), codes
    elif access == STAFF_PAGE:
        assert _is_login_redirect(anonymous, "/accounts/login/")
        assert as_annotator.status_code == 403
        assert _allowed(as_staff), codes
    elif access == ANNOTATOR_API:
        assert anonymous.status_code == 401 and anonymous["Content-Type"] == "application/json"
        assert _allowed(as_annotator) and _allowed(as_staff), codes
    elif access == STAFF_API:
        assert anonymous.status_code == 401
        assert as_annotator.status_code == 403 and as_annotator.json()["detail"]
        assert _allowed(as_staff), codes
    else:
        assert _is_login_redirect(anonymous, "/admin/login/")
        assert _is_login_redirect(as_annotator, "/admin/login/")
        assert not _is_login_redirect(as_staff, "/admin/login/")
