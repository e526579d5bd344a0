"""Single sign-on with OpenID Connect (mozilla-django-oidc), beside local logins.

Off unless OIDC_RP_CLIENT_ID is set. The provider's endpoints come from the settings, or from its discovery document
(OIDC_OP_ISSUER + /.well-known/openid-configuration, kept in the shared cache). What mozilla-django-oidc checks of
the ID token (its RS256 signature against the provider's JWKS, and the nonce) is completed here with the claims it
leaves alone: the issuer, the audience, the expiry.

The provider's groups claim (OIDC_GROUPS_CLAIM) decides who gets in and as what, at every login:
- a group in OIDC_STAFF_GROUPS makes the user staff (and out of those groups, not staff);
- a group that names a Django group some campaign is restricted to puts the user in that Django group (and out of
  the campaign groups the claim no longer names); other Django groups are left as they are;
- a group in OIDC_ANNOTATOR_GROUPS lets the user in as an annotator (of the campaigns open to everyone).
A user in none of these is refused with a 403 page and no account is made; an account that exists already is left
unchanged and is not logged in.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from mozilla_django_oidc.auth import OIDCAuthenticationBackend, default_username_algo
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

logger = logging.getLogger(__name__)

# mozilla-django-oidc's endpoint settings, and where the provider's discovery document names each.
DISCOVERED = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}
DISCOVERY_CACHE_SECONDS = 3600
USERNAME = re.compile(r"^[\w.@+-]{1,150}$")


class SsoRefused(Exception):
    """The provider's answer does not let this person in; the message is shown to them."""


def sso_enabled() -> bool:
    return bool(settings.OIDC_RP_CLIENT_ID)


def sso_discovery() -> dict[str, Any]:
    """The provider's discovery document, fetched once an hour for every process (the shared cache). Its issuer must
    be the configured one: a document that names another is refused, not cached."""
    key = f"sso-discovery:{settings.OIDC_OP_ISSUER}"
    document = cache.get(key)
    if document is None:
        url = settings.OIDC_OP_ISSUER.rstrip("/") + "/.well-known/openid-configuration"
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT, verify=settings.OIDC_VERIFY_SSL)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict) or document.get("issuer") != settings.OIDC_OP_ISSUER:
            raise SsoRefused("The sign-in provider's discovery document names another issuer.")
        cache.set(key, document, DISCOVERY_CACHE_SECONDS)
    return dict(document)


def sso_setting(name: str, *default: Any) -> Any:
    """A setting as mozilla-django-oidc reads it, with the endpoints left empty taken from discovery."""
    value = getattr(settings, name, None)
    if name in DISCOVERED and not value:
        value = sso_discovery().get(DISCOVERED[name], "")
    if value in (None, "") and default:
        return default[0]
    if value is None:
        raise ImproperlyConfigured(f"Setting {name} not found")
    return value


def _username_for(claims: dict[str, Any]) -> str:
    """The provider's preferred_username where it is a valid username nobody has; else one derived from the email."""
    preferred = str(claims.get("preferred_username") or "")
    if USERNAME.match(preferred) and not User.objects.filter(username=preferred).exists():
        return preferred
    return str(default_username_algo(claims.get("email"), claims))


def sso_user_sync(*, claims: dict[str, Any]) -> User:
    """Create or update the user the verified claims describe, with staff status and campaign groups from the groups
    claim. Raises SsoRefused (and changes nothing) for a user in no group that may use pairloop."""
    raw_groups = claims.get(settings.OIDC_GROUPS_CLAIM) or []
    if not isinstance(raw_groups, list):
        raw_groups = [raw_groups]
    names = {str(group) for group in raw_groups}
    email = claims.get("email")
    # Accounts are matched by email, so an address the provider has not verified could sign in as someone else's
    # account: it must say verified, unless staff trust every address it gives (OIDC_TRUST_UNVERIFIED_EMAIL).
    verified = claims.get("email_verified") is True or settings.OIDC_TRUST_UNVERIFIED_EMAIL
    if not isinstance(email, str) or not email or not verified:
        raise SsoRefused("The sign-in provider gave no verified email address for you.")
    is_staff = bool(names & set(settings.OIDC_STAFF_GROUPS))
    campaign_groups = Group.objects.filter(campaigns__isnull=False).distinct()
    granted = list(campaign_groups.filter(name__in=names))
    if not (is_staff or granted or names & set(settings.OIDC_ANNOTATOR_GROUPS)):
        raise SsoRefused("Your account at the sign-in provider is in no group that may use pairloop.")
    with transaction.atomic():
        users = list(User.objects.select_for_update().filter(email__iexact=email))
        if len(users) > 1:
            raise SsoRefused("Several pairloop accounts have your email address; ask staff to merge them.")
        if users and not users[0].is_active:
            raise SsoRefused("Your pairloop account is deactivated.")
        user = users[0] if users else User(username=_username_for(claims), email=email)
        user.is_staff = is_staff or user.is_superuser
        user.first_name = str(claims.get("given_name") or user.first_name)[:150]
        user.last_name = str(claims.get("family_name") or user.last_name)[:150]
        if user.pk is None:
            user.set_unusable_password()  # signs in through the provider only
        user.save()
        user.groups.remove(*campaign_groups.exclude(pk__in=[group.pk for group in granted]))
        user.groups.add(*granted)
    return user


class GroupMappingOIDCBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's code flow, with the claims it leaves unchecked checked, and users made by sso_user_sync.

    The provider is asked nothing until a callback brings a code: a password login never waits on it."""

    get_settings = staticmethod(sso_setting)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.UserModel = get_user_model()

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> User | None:  # type: ignore[override]
        if not sso_enabled() or request is None or "code" not in request.GET:
            return None
        try:
            super().__init__()  # reads the endpoints (from discovery where not set)
            return super().authenticate(request, **kwargs)  # type: ignore[no-any-return]
        except SsoRefused as refused:
            reason = str(refused)
        except jwt.InvalidTokenError as error:  # mozilla-django-oidc's own decode checks the expiry too
            logger.warning("single sign-on: ID token refused: %s", error)
            reason = f"The sign-in provider's token was not accepted ({error})."
        except (SuspiciousOperation, requests.RequestException, ValueError) as error:
            logger.warning("single sign-on failed: %s", error)
            reason = "The sign-in provider's answer could not be verified."
        request.sso_refusal = reason  # type: ignore[attr-defined]
        return None

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        payload: dict[str, Any] = super().verify_token(token, **kwargs)  # the signature and the nonce
        try:
            jwt.decode(
                token,
                options={"verify_signature": False, "verify_exp": True, "verify_iat": True, "verify_nbf": True,
                         "verify_iss": True, "verify_aud": True, "require": ["iss", "aud", "exp", "iat", "sub"]},
                issuer=settings.OIDC_OP_ISSUER,
                audience=settings.OIDC_RP_CLIENT_ID,
                leeway=settings.OIDC_CLOCK_LEEWAY_SECONDS,
            )  # fmt: skip
        except jwt.InvalidTokenError as error:
            logger.warning("single sign-on: ID token refused: %s", error)
            raise SsoRefused(f"The sign-in provider's token was not accepted ({error}).") from None
        return payload

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> User:
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if userinfo.get("sub") != payload.get("sub"):
            raise SsoRefused("The sign-in provider described someone else than its token did.")
        return sso_user_sync(claims={**payload, **userinfo})


def _refused(request: HttpRequest, reason: str, status: int) -> HttpResponse:
    return render(request, "registration/sso_refused.html", {"reason": reason}, status=status)


class _RequestView(OIDCAuthenticationRequestView):
    get_settings = staticmethod(sso_setting)


class _CallbackView(OIDCAuthenticationCallbackView):
    get_settings = staticmethod(sso_setting)

    def login_failure(self) -> HttpResponse:
        reason = getattr(self.request, "sso_refusal", None)
        if reason is None:  # no code, an error from the provider, a lost session
            return _refused(self.request, "The sign-in did not complete. Please try again.", 400)
        return _refused(self.request, reason, 403)


class LoginView(auth_views.LoginView):
    """Django's login page, with a "Sign in with <provider>" link when single sign-on is set up."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["sso_provider"] = settings.OIDC_PROVIDER_NAME if sso_enabled() else ""
        return context


@require_GET
def sso_login(request: HttpRequest) -> HttpResponse:
    """Send the browser to the provider (with state, nonce, and ?next= kept for after the callback)."""
    if not sso_enabled():
        raise Http404("single sign-on is not set up")
    try:
        return _RequestView.as_view()(request)  # type: ignore[no-any-return]
    except SsoRefused as refused:
        return _refused(request, str(refused), 503)
    except (requests.RequestException, ValueError) as error:
        logger.warning("single sign-on: the provider could not be reached: %s", error)
        return _refused(request, "The sign-in provider cannot be reached just now. Please try again later.", 503)


@require_GET
def sso_callback(request: HttpRequest) -> HttpResponse:
    if not sso_enabled():
        raise Http404("single sign-on is not set up")
    try:
        return _CallbackView.as_view()(request)  # type: ignore[no-any-return]
    except SuspiciousOperation:  # a state this browser never asked for (a replay, another tab's session)
        return _refused(request, "The sign-in did not complete. Please try again.", 400)
