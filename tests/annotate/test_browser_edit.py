"""Writing a better answer on the annotate page in Chromium (issue 19 part 3), with the keyboard alone and with the
mouse alone, at a desktop's and a phone's size: the box opens, starts from an answer, and goes with the vote.

With SCREENSHOT_DIR set, the screenshots land there (docs/screenshots/ for the docs); else in the test's tmp_path."""

import pytest

from annotate.models import Campaign, HumanAnswer, Judgement
from tests.annotate.browsers import CHROMIUM, log_in
from tests.annotate.test_browser_annotate import (
    NO_SIDEWAYS_SCROLL,
    SIZES,
    browser,  # noqa: F401 (the module's Chromium, a fixture)
    in_view,
    open_annotate,
    screenshot_path,
    swapped_in,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

LEFT_OR_RIGHT = "The capital of France is Paris."


@pytest.fixture
def pairs(make_pair):
    first = make_pair(texts=(LEFT_OR_RIGHT, "It is Lyon, probably."))
    make_pair(texts=("Second one.", "Second two."))
    Campaign.objects.filter(name="default").update(edits_allowed=True)
    return first


def side_of(page, text: str) -> str:
    return "left" if text in page.inner_text("[data-testid=answer-left]") else "right"


@pytest.mark.parametrize("size", SIZES)
def test_writing_a_better_answer_with_the_keyboard_alone(browser, live_server, annotator, pairs, tmp_path, size):  # noqa: F811
    page = open_annotate(browser, live_server, size)
    page.evaluate("window.notReloaded = true")
    side = side_of(page, LEFT_OR_RIGHT)

    # Z (left) or X (right) opens the box with that answer in it, the cursor in the box.
    page.keyboard.press("z" if side == "left" else "x")
    assert page.locator("[data-testid=edit]").get_attribute("open") is not None
    assert page.input_value("textarea[name=edit]") == LEFT_OR_RIGHT
    assert page.evaluate("document.activeElement.name") == "edit"
    page.keyboard.press("Control+End")
    page.keyboard.type(" It has been since 987.")
    page.keyboard.press("1")  # typed into the box, not a vote
    assert not Judgement.objects.exists()
    page.keyboard.press("Backspace")
    page.keyboard.press("Escape")  # back to the keys
    page.screenshot(path=screenshot_path(tmp_path, f"annotate-edit-{size}"))
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    assert in_view(page, "button[name=choice][value=both_bad]")
    page.keyboard.press("e")
    page.keyboard.press("1" if side == "left" else "2")
    swapped_in(page, "text=Second one.")
    written = HumanAnswer.objects.get()
    assert written.text == f"{LEFT_OR_RIGHT} It has been since 987."
    assert written.started_from == pairs.completion_a and written.judgement.strength == 3
    assert (written.chars_added, written.chars_removed) == (len("Ithasbeensince987."), 0)  # no white space

    # D opens an empty box: an answer written afresh when both are bad.
    page.keyboard.press("d")
    assert page.evaluate("document.activeElement.name") == "edit"  # at once: the keys that follow are text
    page.keyboard.type("Neither: here is mine.")
    page.keyboard.press("Escape")
    page.keyboard.press("4")
    swapped_in(page, "[data-testid=waiting]")
    fresh = HumanAnswer.objects.get(judgement__choice="both_bad")
    assert fresh.text == "Neither: here is mine." and fresh.started_from is None
    assert page.evaluate("window.notReloaded") is True
    page.close()


# D then Esc within one task: the box's "toggle" event, which fires a task after it opens, comes only after both.
# The promise settles once that event has reached the box itself, after the page's own listener (on the document, in
# the capture phase) has run: no waiting by the clock.
D_THEN_ESC = """() => new Promise((settled) => {
  const key = (target, name) => target.dispatchEvent(new KeyboardEvent("keydown", {key: name, bubbles: true}));
  const box = document.querySelector("details.edit-answer");
  box.addEventListener("toggle", () => settled({opened, afterToggle: document.activeElement.name}), {once: true});
  key(document.body, "d");
  const opened = document.activeElement.name;
  key(document.activeElement, "Escape");
})"""


def test_esc_straight_after_d_stays_out_of_the_box(browser, live_server, annotator, pairs):  # noqa: F811
    """A loaded machine ran the box's "toggle" event after the annotator's Esc, and it put the cursor back in the box:
    the next key (Z, to start from an answer) went into it as text. Only the click that opens the box focuses it."""
    page = open_annotate(browser, live_server, "desktop")
    focus = page.evaluate(D_THEN_ESC)
    assert focus["opened"] == "edit"  # D put the cursor in the box at once
    assert focus["afterToggle"] != "edit"  # and the toggle event, after Esc, left it out
    side = side_of(page, LEFT_OR_RIGHT)
    page.keyboard.press("z" if side == "left" else "x")  # a key again, not text
    assert page.input_value("textarea[name=edit]") == LEFT_OR_RIGHT
    page.close()


@pytest.mark.parametrize("size", SIZES)
def test_writing_a_better_answer_with_the_mouse_alone(browser, live_server, annotator, pairs, tmp_path, size):  # noqa: F811
    page = open_annotate(browser, live_server, size)
    other = "right" if side_of(page, LEFT_OR_RIGHT) == "left" else "left"

    page.click("[data-testid=edit] summary")
    page.click(f"[data-testid=edit-from-{other}]")  # start from the other answer
    assert page.input_value("textarea[name=edit]") == "It is Lyon, probably."
    # A phrase pasted in (the mouse's way of writing): the box takes it like typing.
    page.locator("textarea[name=edit]").fill("It is Paris, certainly.")
    page.click("label:has(> input[name=strength][value='2'])")
    page.click(f"button[name=choice][value={other}]")
    swapped_in(page, "text=Second one.")
    written = HumanAnswer.objects.get()
    assert written.started_from == pairs.completion_b and written.text == "It is Paris, certainly."
    assert written.judgement.choice == "b" and written.judgement.strength == 2
    # The next pair's box is closed and empty.
    assert page.locator("[data-testid=edit]").get_attribute("open") is None
    assert page.input_value("textarea[name=edit]") == ""
    page.close()


@pytest.mark.parametrize("size", SIZES)
def test_staff_read_and_reject_a_written_answer_on_the_pair_page(
    browser,  # noqa: F811
    live_server,
    annotator,
    staff,
    pairs,
    tmp_path,
    size,
):
    from tests.annotate.voting import vote_with_edit

    vote_with_edit(annotator, lambda pair: f"{pair.completion_a.text} It has been the capital since 987.")
    width, height = SIZES[size]
    page = browser.new_page(viewport={"width": width, "height": height})
    log_in(page, live_server.url, "sam", "sam-password-1")
    page.goto(f"{live_server.url}/pairs/{pairs.pk}/")
    written = page.locator("[data-testid=human-answer]")
    written.scroll_into_view_if_needed()
    assert "edited from A" in written.inner_text() and "since 987" in written.inner_text()
    page.screenshot(path=screenshot_path(tmp_path, f"pair-written-answer-{size}"))
    # The section fits the window (the votes table above it is as wide as its columns, a matter of its own).
    assert page.evaluate(
        "[...document.querySelectorAll('[data-testid=human-answer], [data-testid=human-answer] *')]"
        ".every(e => e.getBoundingClientRect().right <= window.innerWidth + 0.5)"
    )
    written.locator("input[name=reason]").fill("a date nobody can source")
    written.locator("[data-testid=human-answer-reject]").click()
    page.wait_for_selector("[data-testid=human-answer-accept]")
    assert page.inner_text("[data-testid=human-answer-status]") == "Rejected by staff"
    assert HumanAnswer.objects.get().status == HumanAnswer.Status.REJECTED
    page.close()
