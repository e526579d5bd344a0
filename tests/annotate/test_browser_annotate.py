"""The annotate page in Chromium at a desktop's and a phone's size (issue 22): nothing scrolls sideways, the vote bar is
in view without scrolling, and an annotator does everything with the keyboard alone.

With SCREENSHOT_DIR set, the screenshots land there (docs/screenshots/ for the docs); else in the test's tmp_path."""

import os
import time
from pathlib import Path

import pytest

from annotate.models import Campaign, Judgement
from tests.annotate.browsers import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

SIZES = {"desktop": (1400, 900), "phone": (390, 844)}
CODE_ANSWER = (
    "Use this:\n\n```python\ndef very_long_function_name(argument_one, argument_two, argument_three):  # "
    + "a comment that goes on " * 8
    + "\n    return argument_one\n```\n\n| name | value | unit | note |\n|---|---|---|---|\n"
    + "| a_rather_long_column_value | 12345678901234567890 | metres per second | "
    + "wide " * 20
    + "|\n\nThat is all."
)
GUIDELINES = "Prefer the answer that is **correct**, then the one that is clearer."
NO_SIDEWAYS_SCROLL = "document.scrollingElement.scrollWidth <= window.innerWidth"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def screenshot_path(tmp_path: Path, name: str) -> str:
    folder = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    return str(folder / f"{name}.png")


def open_annotate(browser, live_server, size: str, ready: str = "[data-testid=answer-left]", **options):
    """Log in with the keyboard alone (typing and Enter) and land on the annotate page (`ready` shows on it)."""
    width, height = SIZES[size]
    page = browser.new_page(viewport={"width": width, "height": height}, **options)
    page.goto(f"{live_server.url}/")
    # The login page focuses the user name; keys pressed before it has are lost (seen once on a loaded CI machine:
    # a login failure, then a 30 s wait on the login page), so wait for the focus, as a person waits for the cursor.
    deadline = time.monotonic() + 10
    while not page.evaluate("document.activeElement?.name === 'username'"):
        assert time.monotonic() < deadline, "the login page never focused the user name"
        page.wait_for_timeout(50)
    page.keyboard.type("ann")
    page.keyboard.press("Tab")
    page.keyboard.type("ann-password-1")
    page.keyboard.press("Enter")
    page.wait_for_selector(ready)
    page.wait_for_load_state("load")  # deferred scripts (htmx, the key bindings) have run
    return page


def swapped_in(page, selector: str) -> None:
    """Wait for the new fragment and for htmx to have settled it: a key pressed in between is sent as a plain form
    (which works, but reloads the page the test watches for reloads)."""
    page.wait_for_selector(selector)
    page.wait_for_selector(".htmx-request, .htmx-swapping, .htmx-settling, .htmx-added", state="detached")


def in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    return (
        box is not None
        and min(box["x"], box["y"]) >= 0
        and box["y"] + box["height"] <= height + 0.5
        and (box["x"] + box["width"] <= width + 0.5)
    )


@pytest.mark.parametrize("size", SIZES)
def test_a_code_answer_scrolls_in_its_box_and_the_vote_bar_is_in_view(
    browser, live_server, annotator, make_pair, tmp_path, size
):
    make_pair(texts=(CODE_ANSWER, "A short plain answer."))
    Campaign.objects.filter(name="default").update(guidelines=GUIDELINES)
    page = open_annotate(browser, live_server, size)
    page.screenshot(path=screenshot_path(tmp_path, f"annotate-code-{size}"))

    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    for value in ("left", "right", "tie", "both_bad"):
        assert in_view(page, f"button[name=choice][value={value}]"), value
    for value in (1, 2, 3):
        assert in_view(page, f"label:has(> input[name=strength][value='{value}'])"), value
    # The code and the table scroll inside their own boxes.
    assert page.evaluate("[...document.querySelectorAll('.answer pre, .answer table')].length") == 2
    assert page.evaluate(
        "[...document.querySelectorAll('.answer pre, .answer table')].every(e => e.scrollWidth > e.clientWidth)"
    )
    left, right = (page.locator(f"[data-testid=answer-{side}]").bounding_box() for side in ("left", "right"))
    if size == "desktop":  # side by side, half and half, whatever they hold
        assert abs(left["width"] - right["width"]) < 1 and abs(left["y"] - right["y"]) < 1
    else:  # stacked, each the width of the page
        assert abs(left["x"] - right["x"]) < 1 and left["width"] <= SIZES[size][0]
    page.close()


@pytest.mark.parametrize("size", SIZES)
def test_everything_with_the_keyboard_alone(browser, live_server, annotator, make_pair, tmp_path, size):
    long_text = "\n\n".join(f"Point {number} of a long answer." for number in range(1, 41))
    first = make_pair(texts=("First answer, **left or right**.\n\n" + long_text, "First other answer."))
    second = make_pair(texts=("Second answer one.\n\n" + long_text, "Second answer two."))
    make_pair(texts=("Third answer one.", "Third answer two."))
    Campaign.objects.filter(name="default").update(guidelines=GUIDELINES)
    page = open_annotate(browser, live_server, size)
    page.evaluate("window.notReloaded = true")

    # A first visit shows the guidelines open; G folds them.
    assert page.locator("[data-testid=guidelines]").get_attribute("open") is not None
    page.screenshot(path=screenshot_path(tmp_path, f"annotate-{size}"))
    page.keyboard.press("g")
    assert page.locator("[data-testid=guidelines]").get_attribute("open") is None
    assert page.evaluate(NO_SIDEWAYS_SCROLL)

    # A side without a strength is not sent: the page asks for one (none is chosen in advance).
    page.keyboard.press("1")
    assert page.is_visible("[data-testid=strength-needed]")
    assert not Judgement.objects.exists()
    page.keyboard.press("w")
    assert page.is_checked("input[name=strength][value='2']")
    assert not page.is_visible("[data-testid=strength-needed]")
    page.keyboard.press("r")
    page.keyboard.type("names the real use")
    page.keyboard.press("Escape")  # out of the box, back to the keys
    page.keyboard.press("End")  # read on down the page
    assert page.evaluate("window.scrollY") > 0
    page.keyboard.press("1")
    swapped_in(page, "text=Second answer one.")
    vote = Judgement.objects.get()
    assert (vote.pair_id, vote.choice_on_screen, vote.strength, vote.rationale) == (
        first.pk, "left", 2, "names the real use"
    )  # fmt: skip
    assert page.evaluate("window.scrollY") == 0  # the new pair starts at its top
    assert page.locator("[data-testid=guidelines]").get_attribute("open") is None  # as they left them

    # U takes the vote back: the first pair again, with what they wrote; Q and 2 vote again.
    page.keyboard.press("u")
    swapped_in(page, "[data-testid=undone]")
    assert page.is_visible("text=First other answer.")
    assert page.input_value("textarea[name=rationale]") == "names the real use"
    assert not Judgement.objects.exists()
    page.keyboard.press("q")
    page.keyboard.press("2")
    swapped_in(page, "text=Second answer one.")
    vote = Judgement.objects.get()
    assert (vote.pair_id, vote.choice_on_screen, vote.strength) == (first.pk, "right", 1)

    # S skips; 3 is a tie (no strength needed).
    page.keyboard.press("s")
    swapped_in(page, "text=Third answer one.")
    assert not Judgement.objects.filter(pair=second).exists()
    page.keyboard.press("3")
    swapped_in(page, "[data-testid=waiting]")
    assert Judgement.objects.order_by("id").last().choice == "tie"
    assert page.inner_text("[data-testid=done-today]") == "2"
    assert page.evaluate("window.notReloaded") is True  # htmx swapped each pair in
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    page.screenshot(path=screenshot_path(tmp_path, f"annotate-waiting-{size}"))
    page.close()
