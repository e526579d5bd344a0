"""The annotate page in a real browser: Debian's Chromium driven by Playwright, against a live server."""

import pytest

from annotate.models import Judgement
from tests.annotate.browsers import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def log_in(page, live_server, username, password):
    page.goto(f"{live_server.url}/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("load")  # deferred scripts (htmx, the key bindings) have run


def test_keyboard_votes_swap_in_the_next_pair_without_a_reload(browser, live_server, annotator, make_pair):
    make_pair(texts=("**first** left or right", "first other")), make_pair(texts=("second one", "second two"))
    page = browser.new_page()
    log_in(page, live_server, "ann", "ann-password-1")
    page.wait_for_selector(".answers strong")  # the Markdown answer, on whichever side it was dealt
    page.evaluate("window.notReloaded = true")

    page.keyboard.press("3")  # tie
    page.wait_for_selector("text=second one")

    assert page.evaluate("window.notReloaded") is True  # htmx swapped the fragment; the page did not reload
    assert page.inner_text("[data-testid=done-today]") == "1"
    assert Judgement.objects.get().choice == "tie"

    page.fill("textarea[name=rationale]", "names a real use")
    page.check("input[name=strength][value='3']")
    page.keyboard.press("2")
    page.wait_for_selector("[data-testid=waiting]")
    judgement = Judgement.objects.order_by("id").last()
    assert judgement.choice_on_screen == "right"
    assert (judgement.strength, judgement.rationale) == (3, "names a real use")
    page.close()


def test_the_page_works_without_javascript(browser, live_server, annotator, make_pair):
    make_pair(texts=("one", "two")), make_pair(texts=("three", "four"))
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    log_in(page, live_server, "ann", "ann-password-1")
    page.wait_for_selector("[data-testid=answer-left]")

    page.click("button[value=both_bad]")
    page.wait_for_selector("text=three")
    page.click("text=Skip this pair")
    page.wait_for_selector("[data-testid=waiting]")

    assert Judgement.objects.get().choice == "both_bad"
    assert page.inner_text("[data-testid=done-total]") == "1"
    context.close()


def test_the_annotate_page_shows_the_question_and_both_answers_side_by_side(
    browser, live_server, annotator, make_pair, tmp_path
):
    make_pair(
        texts=("Here are two:\n\n1. **Hold papers**\n2. Reset a router", "A paper clip can hold paper."),
        messages=[{"role": "user", "content": "Name two uses for a paper clip."}],
    )
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    log_in(page, live_server, "ann", "ann-password-1")
    page.wait_for_selector("[data-testid=answer-left]")
    page.screenshot(path=str(tmp_path / "annotate.png"), full_page=True)  # kept for a person to look at on failure

    assert page.inner_text("[data-testid=prompt]") == "Name two uses for a paper clip."
    left, right = (page.locator(f"[data-testid=answer-{side}]") for side in ("left", "right"))
    assert left.is_visible() and right.is_visible()
    texts = {left.inner_text(), right.inner_text()}
    assert any("A paper clip can hold paper." in text for text in texts)
    # The Markdown answer is rendered, not shown as source: a list of two items, the first in bold.
    markdown = page.locator("[data-testid^=answer-] ol")
    assert markdown.locator("li").all_inner_texts() == ["Hold papers", "Reset a router"]
    assert markdown.locator("li strong").inner_text() == "Hold papers"
    assert "**" not in "".join(texts)
    # Side by side, in reading order, both within the window's width and starting on the same line.
    left_box, right_box = left.bounding_box(), right.bounding_box()
    assert left_box["x"] + left_box["width"] <= right_box["x"] + 1
    assert right_box["x"] + right_box["width"] <= 1200
    assert abs(left_box["y"] - right_box["y"]) < 1
    for value in ("left", "right", "tie", "both_bad"):
        assert page.locator(f"button[name=choice][value={value}]").is_visible()
    assert page.is_visible("text=Keys:")
    page.close()
