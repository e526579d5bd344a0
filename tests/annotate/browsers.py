"""What every browser test shares: Debian's Chromium, the flags it runs with here, and the strict policy the
chart tests add on top of the app's own (no inline style at all)."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
STRICT_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'"


def log_in(page, base_url: str, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    """Sign in through the login form, as a person does."""
    page.goto(f"{base_url}/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    # Signed in only once the form's answer has taken the page off the login form: a goto before that races it.
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


@contextmanager
def signed_in_page(base_url: str, username: str, password: str) -> Iterator[Any]:
    """A Chromium page at the desktop size (1400x900), signed in through the login form."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        log_in(page, base_url, username, password)
        yield page
        browser.close()
