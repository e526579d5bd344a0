"""Single sign-on against a real OpenID Connect provider (django-oauth-toolkit in its own process, see
oidc_provider.py): the whole code flow, from the login page's button to a session, and the refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from rest_framework.test import APIClient

from tests.annotate.browsers import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.django_db

CLIENT = {"id": "pairloop", "secret": "a-client-secret", "redirect_uri": "http://testserver/accounts/sso/callback/"}
USERS = {
    "ada": {"email": "ada@example.org", "groups": ["pairloop-staff", "raters"]},
    "bo": {"email": "bo@example.org", "groups": ["raters", "marketing"]},
    "cy": {"email": "cy@example.org", "groups": ["marketing"]},
    "dee": {"email": "dee@example.org", "groups": ["pairloop-staff"], "id_token_seconds": -3600},
    "eve": {"email": "ada@example.org", "groups": ["raters"], "email_verified": False},
    "fay": {"email": "ada@example.org", "groups": ["pairloop-staff"], "email_verified": None},
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory, live_server):
    """The provider's address; it signs with an RSA key made for this run, and sends the browser back to the test
    client's address or the live server's."""
    folder = tmp_path_factory.mktemp("oidc-provider")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    spec = folder / "spec.json"
    client = {**CLIENT, "redirect_uri": f"{CLIENT['redirect_uri']} {live_server.url}/accounts/sso/callback/"}
    spec.write_text(json.dumps({"dir": str(folder), "private_key": pem.decode(), "client": client, "users": USERS,
                                "browser_user": "ada"}))  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("oidc_provider.py")), str(spec)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = process.stdout.readline().strip()
        assert port.isdigit(), "the provider did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def sso(settings, provider):
    """pairloop set up for the provider from its issuer alone (the endpoints come from discovery)."""
    settings.OIDC_RP_CLIENT_ID = CLIENT["id"]
    settings.OIDC_RP_CLIENT_SECRET = CLIENT["secret"]
    settings.OIDC_OP_ISSUER = f"{provider}/o"
    settings.OIDC_STAFF_GROUPS = ["pairloop-staff"]
    settings.OIDC_PROVIDER_NAME = "Example ID"
    cache.clear()
    return provider


def sign_in(client, provider, username):
    """The browser's journey: the login page's button, the provider (where the user signs in), back to pairloop."""
    to_provider = client.get("/accounts/sso/login/?next=/")
    assert to_provider.status_code == 302
    authorize = to_provider["Location"]
    assert authorize.startswith(f"{provider}/o/authorize/")
    with httpx.Client() as browser:
        browser.get(f"{provider}/as/{username}/", params={"next": authorize})  # the provider's own login
        back = browser.get(authorize)
    assert back.status_code == 302, back.text
    callback = urlsplit(back.headers["location"])
    assert callback.path == "/accounts/sso/callback/"
    return client.get(f"{callback.path}?{callback.query}")


def test_the_login_page_offers_single_sign_on_only_when_set_up(client, settings):
    settings.OIDC_RP_CLIENT_ID = ""
    assert b"Sign in with" not in client.get("/accounts/login/").content
    assert client.get("/accounts/sso/login/").status_code == 404
    settings.OIDC_RP_CLIENT_ID = "pairloop"
    settings.OIDC_OP_ISSUER = "https://id.example.org"
    settings.OIDC_PROVIDER_NAME = "<b>Example</b> ID"
    page = client.get("/accounts/login/?next=/quality/").content.decode()
    assert 'href="/accounts/sso/login/?next=/quality/"' in page
    assert "Sign in with &lt;b&gt;Example&lt;/b&gt; ID" in page


def test_a_staff_group_signs_in_as_staff(client, sso, staff):
    raters = Group.objects.create(name="raters")  # as staff make one in the admin
    api = APIClient()
    api.force_authenticate(staff)
    assert api.post("/api/campaigns/", {"name": "chat", "groups": ["raters"]}, format="json").status_code == 201

    response = sign_in(client, sso, "ada")

    assert response.status_code == 302 and response["Location"] == "/"
    user = User.objects.get(email="ada@example.org")
    assert user.username == "ada" and user.is_staff and not user.has_usable_password()
    assert list(user.groups.all()) == [raters]
    assert client.get("/dashboard/").status_code == 200  # the session is the staff user's


def test_a_campaign_group_signs_in_as_its_annotator_and_follows_the_claim(client, sso, staff):
    raters = Group.objects.create(name="raters")
    other = Group.objects.create(name="reviewers")
    api = APIClient()
    api.force_authenticate(staff)
    for name, group in (("chat", "raters"), ("review", "reviewers")):
        assert api.post("/api/campaigns/", {"name": name, "groups": [group]}, format="json").status_code == 201
    local = User.objects.create_user("bo-local", email="BO@example.org", is_staff=True)
    local.groups.add(other)  # a campaign group the provider no longer names

    response = sign_in(client, sso, "bo")

    assert response.status_code == 302
    local.refresh_from_db()
    assert User.objects.filter(email__iexact="bo@example.org").count() == 1  # the account, matched by email
    assert not local.is_staff and list(local.groups.all()) == [raters]
    assert client.get("/dashboard/").status_code == 403 and client.get("/").status_code == 200


def test_a_user_in_no_group_is_refused_and_no_account_is_made(client, sso):
    response = sign_in(client, sso, "cy")

    assert response.status_code == 403
    assert "in no group that may use pairloop" in response.content.decode()
    assert not User.objects.filter(email="cy@example.org").exists()
    assert client.get("/").status_code == 302  # not logged in: to the login page


def test_an_existing_account_in_no_group_is_refused_and_left_as_it_was(client, sso):
    local = User.objects.create_user("cy-local", email="cy@example.org", password="cy-password-1", is_staff=True)

    response = sign_in(client, sso, "cy")

    assert response.status_code == 403
    local.refresh_from_db()
    assert local.is_staff and local.is_active and local.check_password("cy-password-1")
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("username", ["eve", "fay"])
def test_an_address_the_provider_did_not_verify_never_signs_in_as_its_account(client, sso, username):
    """eve's provider account claims ada's address unverified, fay's leaves email_verified out: neither may take over
    ada's local staff account, nor make one."""
    ada = User.objects.create_user("ada", email="ada@example.org", password="ada-password-1", is_staff=True)

    response = sign_in(client, sso, username)

    assert response.status_code == 403
    assert "no verified email address" in response.content.decode()
    ada.refresh_from_db()
    assert ada.is_staff and ada.check_password("ada-password-1") and list(ada.groups.all()) == []
    assert User.objects.count() == 1
    assert client.get("/").status_code == 302  # not logged in


def test_a_provider_trusted_with_unverified_addresses_signs_them_in(client, sso, settings):
    settings.OIDC_TRUST_UNVERIFIED_EMAIL = True

    response = sign_in(client, sso, "fay")

    assert response.status_code == 302
    assert User.objects.get(email="ada@example.org").is_staff


def test_an_expired_id_token_is_refused(client, sso):
    response = sign_in(client, sso, "dee")

    assert response.status_code == 403
    assert "Signature has expired" in response.content.decode()
    assert not User.objects.filter(email="dee@example.org").exists()


def test_a_token_from_another_issuer_is_refused(client, sso, settings):
    """The provider's endpoints, but pairloop trusts another issuer: its tokens are refused."""
    document = httpx.get(f"{sso}/o/.well-known/openid-configuration").json()
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = document["authorization_endpoint"]
    settings.OIDC_OP_TOKEN_ENDPOINT = document["token_endpoint"]
    settings.OIDC_OP_USER_ENDPOINT = document["userinfo_endpoint"]
    settings.OIDC_OP_JWKS_ENDPOINT = document["jwks_uri"]
    settings.OIDC_OP_ISSUER = "https://id.example.org"

    response = sign_in(client, sso, "ada")

    assert response.status_code == 403
    assert "Invalid issuer" in response.content.decode()
    assert not User.objects.filter(email="ada@example.org").exists()


def test_discovery_naming_another_issuer_stops_the_sign_in(client, sso, settings):
    settings.OIDC_OP_ISSUER = f"{sso}/o/"  # the document says .../o: not the same issuer
    response = client.get("/accounts/sso/login/")
    assert response.status_code == 503
    assert "names another issuer" in response.content.decode()


def test_a_callback_without_a_sign_in_changes_nothing(client, sso):
    assert client.get("/accounts/sso/callback/").status_code == 400
    assert client.get("/accounts/sso/callback/?code=x&state=forged").status_code == 400
    assert client.get("/accounts/sso/callback/?error=access_denied").status_code == 400
    assert User.objects.count() == 0


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)  # the live server's thread sees what the flow writes
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_a_browser_signs_in_with_the_login_pages_button(sso, live_server, tmp_path):
    """Chromium clicks "Sign in with Example ID": to the provider and back, refused in no group, then in as staff.
    SCREENSHOT_DIR=docs/screenshots keeps its screenshots for the docs."""
    shots = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{live_server.url}/accounts/login/")
        page.screenshot(path=str(shots / "login-desktop.png"))
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(shots / "login-phone.png"))

        page.goto(f"{sso}/as/cy/?next=/o/.well-known/openid-configuration")  # cy is signed in at the provider
        page.goto(f"{live_server.url}/accounts/login/")
        page.click("[data-testid=sso-login]")
        page.wait_for_selector("[data-testid=sso-refused]")
        assert "in no group that may use pairloop" in page.inner_text("[data-testid=sso-refused]")
        page.screenshot(path=str(shots / "sso-refused-phone.png"))
        assert not User.objects.filter(username="cy").exists()

        page.goto(f"{sso}/as/ada/?next=/o/.well-known/openid-configuration")  # now ada, a staff group's member
        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(f"{live_server.url}/accounts/login/?next=/dashboard/")
        page.click("[data-testid=sso-login]")
        page.wait_for_url(f"{live_server.url}/dashboard/")
        assert User.objects.get(username="ada").is_staff
        browser.close()
