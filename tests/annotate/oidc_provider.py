"""A real OpenID Connect provider for the single sign-on tests: django-oauth-toolkit, in a process of its own.

It runs as a separate process with its own settings and database, as an identity provider does: its users, its
application and its signing key are its own, and pairloop's settings never name oauth2_provider. (In the same
process it would need oauth2_provider in pairloop's INSTALLED_APPS and its tables in every test database.)

    python tests/annotate/oidc_provider.py SPEC.json

SPEC names a folder for its database, the RSA private key (PEM) it signs ID tokens with, the client (id, secret,
redirect URIs, space-separated) and the users (username, email, groups, and optionally id_token_seconds: the
lifetime of their ID tokens, negative for one already expired; email_verified: false, or null to leave the claim
out). It prints its port on the first line, then serves until killed.
A test signs a user in with GET /as/<username>/?next=<authorize URL>: the provider's own login, which is not what
is under test, so it takes no password; a browser that comes to the provider unsigned is signed in as SPEC's
browser_user.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
from django.conf import settings

SPEC: dict[str, Any] = json.loads(Path(sys.argv[1]).read_text()) if __name__ == "__main__" else {}


def _configure() -> None:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="oidc-provider-for-tests",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        LOGIN_URL=f"/as/{SPEC.get('browser_user', '')}/",  # a browser sent to sign in is signed in as this user
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "oauth2_provider",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(Path(SPEC["dir"]) / "op.db")}},
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
        USE_TZ=True,
        OAUTH2_PROVIDER={
            "OIDC_ENABLED": True,
            "OIDC_RSA_PRIVATE_KEY": SPEC["private_key"],
            "PKCE_REQUIRED": False,
            "SCOPES": {"openid": "OpenID Connect", "email": "Email", "profile": "Profile"},
            "OAUTH2_VALIDATOR_CLASS": f"{__name__}.GroupsValidator",
        },
    )
    django.setup()


if __name__ == "__main__":
    _configure()

    from django.contrib.auth import login
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
    from django.shortcuts import get_object_or_404
    from django.urls import include, path
    from django.utils import timezone
    from oauth2_provider.models import Application
    from oauth2_provider.oauth2_validators import OAuth2Validator

    class GroupsValidator(OAuth2Validator):
        """Adds email, username and groups to the ID token and userinfo, and each user's token lifetime."""

        oidc_claim_scope = {**OAuth2Validator.oidc_claim_scope, "groups": "openid"}

        def get_additional_claims(self, request: Any) -> dict[str, Any]:
            user = SPEC["users"][request.user.username]
            claims = {"email": user["email"], "preferred_username": request.user.username, "groups": user["groups"]}
            verified = user.get("email_verified", True)  # null in SPEC: the claim is left out, as some providers do
            if verified is not None:
                claims["email_verified"] = verified
            return claims

        def get_id_token_dictionary(self, token: Any, token_handler: Any, request: Any) -> Any:
            claims, expiration = super().get_id_token_dictionary(token, token_handler, request)
            seconds = SPEC["users"][request.user.username].get("id_token_seconds")
            if seconds is not None:
                expiration = timezone.now() + timedelta(seconds=seconds)
                claims["exp"] = int(expiration.timestamp())
            return claims, expiration

    def sign_in_as(request: HttpRequest, username: str) -> HttpResponse:
        login(request, get_object_or_404(User, username=username))
        return HttpResponseRedirect(request.GET["next"])

    urlpatterns = [
        path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
        path("as/<str:username>/", sign_in_as),
    ]

    call_command("migrate", verbosity=0)
    for username in SPEC["users"]:
        User.objects.get_or_create(username=username)
    client = SPEC["client"]
    Application.objects.update_or_create(
        client_id=client["id"],
        defaults={
            "client_secret": client["secret"], "client_type": Application.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE, "redirect_uris": client["redirect_uri"],
            "algorithm": Application.RS256_ALGORITHM, "skip_authorization": True, "name": "pairloop",
        },
    )  # fmt: skip

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    class ThreadingServer(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    from django.core.wsgi import get_wsgi_application

    server = make_server("127.0.0.1", 0, get_wsgi_application(), ThreadingServer, QuietHandler)
    print(server.server_port, flush=True)
    server.serve_forever()
