"""The quality page in a real browser (Debian's Chromium through Playwright, against a live server): its wide
annotator table stays inside the content column, scrolling in its own box when the window is narrow."""

import os
from pathlib import Path

import pytest

from tests.annotate.browsers import CHROMIUM, CHROMIUM_ARGS

from .test_quality_views import population  # noqa: F401  (the fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

WIDTHS = """() => {
    const table = document.querySelector('#quality-annotators');
    const box = table.parentElement;
    return {page: document.documentElement.scrollWidth, window: window.innerWidth,
            table: table.getBoundingClientRect().width, box: box.clientWidth,
            box_scrolls: box.scrollWidth > box.clientWidth};
}"""


def test_the_annotator_table_stays_in_the_content_column(population, staff, live_server, tmp_path):  # noqa: F811
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)  # where the screenshots go, to look at

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{live_server.url}/")
        page.fill("input[name=username]", "sam")
        page.fill("input[name=password]", "sam-password-1")
        page.click("button[type=submit]")
        page.goto(f"{live_server.url}/quality/")
        page.wait_for_selector("#quality-annotators tr[data-annotator=zed]")

        # At 1280 px the fifteen columns fit the content column: no scrolling at all.
        wide = page.evaluate(WIDTHS)
        assert wide["page"] <= wide["window"], wide
        assert wide["table"] <= wide["box"] and not wide["box_scrolls"], wide
        page.screenshot(path=str(shots / "quality-1280.png"), full_page=True)

        # Narrower, the table scrolls in its own box and the staff menu wraps: the page itself does not widen.
        page.set_viewport_size({"width": 800, "height": 900})
        narrow = page.evaluate(WIDTHS)
        assert narrow["page"] <= narrow["window"] and narrow["box_scrolls"], narrow
        page.screenshot(path=str(shots / "quality-800.png"), full_page=True)
        browser.close()
