"""The webhook pages in a real browser (Debian's Chromium through Playwright, against a live server): staff register
an endpoint with the form, see its secret once, send a test event and read the receiver's (hostile) answer, escaped;
no script or style breaks the Content-Security-Policy, and neither page is wider than a phone."""

import os
from pathlib import Path

import pytest

from annotate.hooks import services as hooks
from annotate.models import WebhookDelivery, WebhookEndpoint
from tests.annotate.browsers import CHROMIUM, CHROMIUM_ARGS

from .webhook_receiver import webhook_receiver

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

HOSTILE = b'<script>alert("answer")</script><img src=x onerror=alert(1)>' + b"x" * 3000
WIDE = "() => document.documentElement.scrollWidth - window.innerWidth"


def _is_problem(message) -> bool:
    return message.type == "error" and not message.text.startswith("Failed to load resource")


def test_staff_register_an_endpoint_and_read_its_deliveries(staff, live_server, tmp_path, settings):
    from playwright.sync_api import sync_playwright

    settings.WEBHOOK_RETRY_SECONDS = [0.0]
    shots = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)  # docs/screenshots when asked for, to look at
    with webhook_receiver() as receiver, sync_playwright() as playwright:
        receiver.answers["/hook"] = [(500, HOSTILE, 0.0), (200, b'{"ok": true}', 0.0)]
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        problems: list[str] = []
        # Script errors and CSP refusals; not the 400 the bad form gets on purpose, nor the missing favicon.
        page.on("console", lambda message: problems.append(message.text) if _is_problem(message) else None)
        page.on("dialog", lambda dialog: problems.append(f"a dialog: {dialog.message}"))
        page.goto(f"{live_server.url}/")
        page.fill("input[name=username]", "sam")
        page.fill("input[name=password]", "sam-password-1")
        page.click("button[type=submit]")

        page.click("nav >> text=Webhooks")
        page.fill("input[name=url]", "ftp://example.com/hook")
        page.check("input[value='vote.recorded']")
        page.click("button:has-text('Register')")
        assert "must start with http" in page.inner_text("form.webhook-form")
        assert not WebhookEndpoint.objects.exists()

        page.fill("input[name=url]", receiver.url + "/hook")
        for event in ("vote.recorded", "round.finished", "round.failed", "export.ready"):
            page.check(f"input[value='{event}']")
        page.check("input[name=allow_private]")
        page.click("button:has-text('Register')")
        endpoint = WebhookEndpoint.objects.get()
        assert page.inner_text("[data-testid=secret]") == endpoint.secret
        page.screenshot(path=str(shots / "webhooks-desktop.png"))
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_load_state("load")  # widths only once the stylesheets apply (the text comes before them)
        assert page.evaluate(WIDE) <= 0
        page.screenshot(path=str(shots / "webhooks-phone.png"))

        page.goto(f"{live_server.url}/webhooks/{endpoint.pk}/")
        assert endpoint.secret not in page.content()
        page.click("button:has-text('Send a test event')")
        delivery = WebhookDelivery.objects.get()
        hooks.webhook_delivery_send(delivery_id=delivery.pk)  # as the worker does: the receiver answers 500
        hooks.webhook_deliveries_send_due()
        hooks.webhook_delivery_send(delivery_id=delivery.pk)  # the retry: 200
        page.reload()
        page.click("summary:has-text('2 attempts')")
        assert "answered 500" in page.inner_text("[data-testid=deliveries]")
        assert '<script>alert("answer")</script>' in page.inner_text("[data-testid=deliveries]")  # shown as text
        assert page.evaluate(WIDE) <= 0
        page.locator("[data-testid=deliveries]").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "webhook-phone.png"))
        page.set_viewport_size({"width": 1400, "height": 900})
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shots / "webhook-desktop.png"))
        browser.close()
    assert problems == []
