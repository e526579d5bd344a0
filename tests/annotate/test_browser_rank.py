"""Ranking K answers in Chromium (issue 19 part 2): with the keyboard alone, with the mouse alone, and with the mouse
and no JavaScript at all; at a desktop's and a phone's size nothing scrolls sideways and the save button is in view.

With SCREENSHOT_DIR set, the rank-4 screenshots land there (docs/screenshots/ for the docs)."""

import pytest

from annotate.annotation import rankings
from annotate.models import Assignment, Judgement
from tests.annotate import test_browser_annotate
from tests.annotate.browsers import CHROMIUM
from tests.annotate.test_browser_annotate import (
    NO_SIDEWAYS_SCROLL,
    SIZES,
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

browser = test_browser_annotate.browser  # the same Chromium fixture
RANK_FORM = "[data-testid=rank-form]"
ANSWERS = [
    "Boil the kettle, pour it over the leaves and wait **three minutes**, then take the leaves out.",
    "Tea is made from leaves. Put them in water. Hot water works best, as everyone knows.",
    "1. Warm the pot.\n2. One spoon of leaves per cup.\n3. Water just off the boil.\n4. Steep 3-5 minutes.",
    "Use a bag.",
]


def stored_as(annotator, pair, ranks_on_screen) -> list[int]:
    assignment = Assignment.objects.get(pair=pair, annotator=annotator)
    return rankings.ranking_by_position(ranks_on_screen, assignment.answer_order)


@pytest.mark.parametrize("size", SIZES)
def test_ranking_with_the_keyboard_alone(browser, live_server, annotator, make_ranking_pair, tmp_path, size):
    first = make_ranking_pair(texts=ANSWERS)
    second = make_ranking_pair()
    page = open_annotate(browser, live_server, size, ready=RANK_FORM)
    page.evaluate("window.notReloaded = true")
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    assert in_view(page, "[data-testid=rank-submit]") and in_view(page, "[data-testid=rank-all-bad]")

    # 2 first; T and 4: the same place as 2 (a tie); then 1; then 3.
    for key in ("2", "t", "4", "1", "3"):
        page.keyboard.press(key)
    assert [page.is_checked(f"[data-testid=rank-{number}-{rank}]") for number, rank in
            ((1, 2), (2, 1), (3, 3), (4, 1))] == [True] * 4  # fmt: skip
    assert "2 = 4 > 1 > 3" in page.inner_text("[data-testid=rank-order]")
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    page.screenshot(path=screenshot_path(tmp_path, f"annotate-rank4-{size}"))
    assert not Judgement.objects.exists()
    page.keyboard.press("Enter")
    swapped_in(page, "text=Answer A to 2.")
    judgement = Judgement.objects.get()
    assert (judgement.pair_id, judgement.ranking) == (first.pk, stored_as(annotator, first, [2, 1, 3, 1]))

    # X clears what was placed; B says all bad.
    page.keyboard.press("1")
    page.keyboard.press("x")
    assert page.locator(f"{RANK_FORM} input[type=radio]:checked").count() == 0
    page.keyboard.press("b")
    swapped_in(page, "[data-testid=waiting]")
    last = Judgement.objects.get(pair=second)
    assert (last.choice, last.ranking) == ("both_bad", [1, 1, 1, 1])
    assert page.evaluate("window.notReloaded") is True  # htmx swapped each pair in
    page.close()


@pytest.mark.parametrize("javascript", [True, False], ids=["with-js", "without-js"])
def test_ranking_with_the_mouse_alone(browser, live_server, annotator, make_ranking_pair, javascript):
    pair = make_ranking_pair()
    page = open_annotate(browser, live_server, "desktop", ready=RANK_FORM, java_script_enabled=javascript)
    for number, rank in ((1, 3), (2, 1), (3, 2), (4, 3)):  # 1 and 4 tied last
        page.click(f"[data-testid=rank-{number}-{rank}]")
    page.click("[data-testid=rank-submit]")
    page.wait_for_selector("[data-testid=waiting]")
    judgement = Judgement.objects.get()
    assert (judgement.pair_id, judgement.ranking) == (pair.pk, stored_as(annotator, pair, [3, 1, 2, 3]))
    page.close()


def test_a_ranking_with_an_answer_left_out_is_refused_on_the_page(browser, live_server, annotator, make_ranking_pair):
    make_ranking_pair()
    page = open_annotate(browser, live_server, "phone", ready=RANK_FORM)
    page.click("[data-testid=rank-1-1]")
    page.click("[data-testid=rank-submit]")
    page.wait_for_selector("[role=alert]")
    assert "exactly 4 ranks, one per answer shown (got 1)" in page.inner_text("[role=alert]")
    assert not Judgement.objects.exists()
    page.close()
