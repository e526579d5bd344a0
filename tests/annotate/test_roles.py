"""Who may call what: every URL pattern of the project, as anonymous, annotator and staff.

The list of patterns comes from the URLconf itself, so a new URL without an entry in ACCESS fails
`test_every_url_pattern_has_an_expectation` until someone decides who may call it.
"""

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

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
    "login": (PUBLIC, ["get", "post"]),
    "logout": (LOGOUT, ["post"]),
    "api-pairs-next": (ANNOTATOR_API, ["get"]),
    "api-pairs-skip": (ANNOTATOR_API, ["post"]),
    "api-judgements": (ANNOTATOR_API, ["post"]),
    "rounds": (STAFF_PAGE, ["get"]),
    "round-start": (STAFF_PAGE, ["post"]),
    "round-detail": (STAFF_PAGE, ["get"]),
    "round-cancel": (STAFF_PAGE, ["post"]),
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
    "api-export-download": (STAFF_API, ["get"]),
    "start": (ANNOTATOR_PAGE, ["get"]),
    "dashboard": (STAFF_PAGE, ["get"]),
    "campaigns": (STAFF_PAGE, ["get", "post"]),
    "campaign-edit": (STAFF_PAGE, ["get", "post"]),
    "pair-detail": (STAFF_PAGE, ["get"]),
    "pair-gold": (STAFF_PAGE, ["post"]),
    "leaderboard": (STAFF_PAGE, ["get"]),
    "quality": (STAFF_PAGE, ["get"]),
    "quality-annotator": (STAFF_PAGE, ["get"]),
    "quality-annotator-act": (STAFF_PAGE, ["post"]),
    "api-campaigns": (STAFF_API, ["get", "post"]),
    "api-campaign": (STAFF_API, ["get"]),
    "api-pair-gold": (STAFF_API, ["post"]),
    "api-annotator-actions": (STAFF_API, ["post"]),
    "api-leaderboard": (STAFF_API, ["get"]),
    "api-quality": (STAFF_API, ["get"]),
    "healthz": (PUBLIC, ["get"]),
    "api-schema": (PUBLIC, ["get"]),
    "api-docs": (PUBLIC, ["get"]),
    "admin:login": (PUBLIC, ["get", "post"]),
    "admin:logout": (LOGOUT, ["post"]),
}
ADMIN_DEFAULT = (ADMIN, ["get"])  # every other admin page: the admin protects all of its views the same way


def _fill(pattern) -> str:
    """A concrete path for a pattern: ids that exist nowhere, the first choice of a regex alternative."""
    if isinstance(pattern, RoutePattern):
        return re.sub(r"<(?:\w+:)?\w+>", "999999", str(pattern))
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


def _call(client, method, path):
    if method == "get":
        return client.get(path)
    return client.post(path, {}, format="json") if isinstance(client, APIClient) else client.post(path, {})


def _is_login_redirect(response, login_path):
    return response.status_code == 302 and response["Location"].startswith(login_path)


def _allowed(response):
    return response.status_code not in (401, 403) and not (
        response.status_code == 302 and "/login/" in response["Location"]
    )


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
def test_the_role_matrix(clients, annotator, staff, name, path, method):
    access, _ = ACCESS.get(name, ADMIN_DEFAULT)
    api = access in (ANNOTATOR_API, STAFF_API)

    anonymous = _call(clients(None, api), method, path)
    as_annotator = _call(clients(annotator, api), method, path)
    as_staff = _call(clients(staff, api), method, path)

    for response in (anonymous, as_annotator, as_staff):
        assert response.status_code < 500, response.status_code
    if access == LOGOUT:
        assert {response.status_code for response in (anonymous, as_annotator, as_staff)} <= {200, 302}
    elif access == PUBLIC:
        assert all(_allowed(response) for response in (anonymous, as_annotator, as_staff))
    elif access == ANNOTATOR_PAGE:
        assert _is_login_redirect(anonymous, "/accounts/login/")
        assert _allowed(as_annotator) and _allowed(as_staff)
    elif access == STAFF_PAGE:
        assert _is_login_redirect(anonymous, "/accounts/login/")
        assert as_annotator.status_code == 403
        assert _allowed(as_staff)
    elif access == ANNOTATOR_API:
        assert anonymous.status_code == 401 and anonymous["Content-Type"] == "application/json"
        assert _allowed(as_annotator) and _allowed(as_staff)
    elif access == STAFF_API:
        assert anonymous.status_code == 401
        assert as_annotator.status_code == 403 and as_annotator.json()["detail"]
        assert _allowed(as_staff)
    else:
        assert _is_login_redirect(anonymous, "/admin/login/")
        assert _is_login_redirect(as_annotator, "/admin/login/")
        assert not _is_login_redirect(as_staff, "/admin/login/")
