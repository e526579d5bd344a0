"""Keep talking in Chromium (annotate.turns): after a vote the annotator writes the next user turn, the two answers
stream into the panes, and the pair for the longer conversation comes up to vote on: once with the keyboard alone
(at a desktop's size), once with the mouse alone (at a phone's; the message itself is typed, as it must be).

The model server is the vLLM-shaped stub streaming word by word. With SCREENSHOT_DIR set, the screenshots land there
(docs/screenshots/ for the docs); else in the test's tmp_path."""

import time

import pytest

from annotate.models import Campaign, Continuation, Judgement
from tests.annotate.browsers import CHROMIUM
from tests.annotate.model_server_stub import ModelServerStub
from tests.annotate.test_browser_annotate import (  # noqa: F401 (browser: the module's Chromium, a fixture)
    NO_SIDEWAYS_SCROLL,
    SIZES,
    browser,
    open_annotate,
    screenshot_path,
    swapped_in,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

FIRST = "What is a good first houseplant?"
NEXT = "Which of those needs the least light?"


@pytest.fixture
def talking(settings, serving_version, make_pair, annotator):
    """A campaign that allows continuing, one pair of it, and the stub model server streaming slowly enough to see."""
    Campaign.objects.create(name="talk", title="Houseplants", continuation_allowed=True)
    make_pair(
        texts=("A **pothos**: it forgives missed waterings.", "A cactus, always."),
        messages=[{"role": "user", "content": FIRST}],
        prompt_set="talk",
    )
    server = ModelServerStub(served_models=(serving_version.name,))
    server.stream_piece_seconds = 0.15
    with server.running():
        settings.VLLM_BASE_URL = server.url
        yield server


def chosen_text(judgement) -> str:
    pair = judgement.pair
    return (pair.completion_a if judgement.choice == Judgement.Choice.A else pair.completion_b).text


def watch_it_stream_in(page, tmp_path, size: str) -> None:
    """The conversation shows at once, the answers fill in piece by piece, then the pair to vote on comes up."""
    page.wait_for_selector("[data-testid=conversation-waiting]")
    deadline = time.monotonic() + 20  # (wait_for_function evaluates a string: the page's policy refuses it)
    while not (partial := page.inner_text("[data-testid=stream-left] .streaming")):
        assert time.monotonic() < deadline, "nothing streamed into the left pane"
        page.wait_for_timeout(30)
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    page.screenshot(path=screenshot_path(tmp_path, f"annotate-multi-turn-streaming-{size}"))
    swapped_in(page, "[data-testid=answer-left]")
    pair = Continuation.objects.get().pair
    left = page.inner_text("[data-testid=answer-left]")
    assert pair.completion_a.text in left and left.strip().startswith("Left")
    assert partial and pair.completion_a.text.startswith(partial.strip()[:10])  # it was this answer, streaming
    assert page.is_visible("text=Earlier in this conversation (2 messages)")
    assert page.inner_text("[data-testid=prompt]") == NEXT
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    page.screenshot(path=screenshot_path(tmp_path, f"annotate-multi-turn-{size}"))


def test_a_conversation_continued_with_the_keyboard_alone(browser, live_server, talking, tmp_path):  # noqa: F811
    page = open_annotate(browser, live_server, "desktop")
    page.evaluate("window.notReloaded = true")
    page.keyboard.press("w")
    page.keyboard.press("1")
    swapped_in(page, "[data-testid=next-turn]")
    assert Judgement.objects.get().choice_on_screen == "left"
    page.screenshot(path=screenshot_path(tmp_path, "annotate-multi-turn-offer-desktop"))

    page.keyboard.press("t")  # into the message box
    page.keyboard.type(NEXT)
    page.keyboard.press("Tab")  # to its button
    page.keyboard.press("Enter")

    watch_it_stream_in(page, tmp_path, "desktop")
    continuation = Continuation.objects.get()
    assert continuation.prompt.messages[-1]["content"] == NEXT
    assert continuation.prompt.messages[1]["content"] == chosen_text(continuation.judgement)
    page.keyboard.press("e")  # and the new pair is voted on with the keys, like any other
    page.keyboard.press("2")
    swapped_in(page, "[data-testid=next-turn]")  # which may be continued in turn
    assert Judgement.objects.filter(pair=continuation.pair).get().strength == 3
    assert page.evaluate("window.notReloaded") is True  # htmx and the stream did it all in place
    page.close()


def test_a_conversation_continued_with_the_mouse_alone(browser, live_server, talking, tmp_path):  # noqa: F811
    page = open_annotate(browser, live_server, "phone")  # (logging in is typed)
    page.evaluate("window.notReloaded = true")
    page.click("label:has(> input[name=strength][value='2'])")
    page.click("button[name=choice][value=right]")
    swapped_in(page, "[data-testid=next-turn]")
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    page.screenshot(path=screenshot_path(tmp_path, "annotate-multi-turn-offer-phone"))

    page.click("textarea[name=message]")
    page.keyboard.type(NEXT)
    page.click("[data-testid=next-turn-send]")

    watch_it_stream_in(page, tmp_path, "phone")
    continuation = Continuation.objects.get()
    assert continuation.judgement.choice_on_screen == "right"
    assert continuation.prompt.messages[1]["content"] == chosen_text(continuation.judgement)
    page.click("button[name=choice][value=tie]")
    swapped_in(page, "[data-testid=waiting]")
    assert page.evaluate("window.notReloaded") is True
    assert SIZES["phone"] == (390, 844)
    page.close()


def test_a_hostile_conversation_streams_in_and_runs_nothing(browser, live_server, settings, serving_version, make_pair):  # noqa: F811
    """Hostile text in every part of a continued conversation: the chosen answer (now the assistant's turn), the
    annotator's next turn, and answers streamed piece by piece (each piece is added as text, never as HTML)."""
    from django.contrib.auth.models import User

    from tests.annotate.test_browser_hostile import HOSTILE, Watched

    User.objects.create_user("ann", password="ann-password-1")
    Campaign.objects.create(name="talk", continuation_allowed=True)
    make_pair(texts=(f"Left. {HOSTILE}", f"Right. {HOSTILE}"), messages=[{"role": "user", "content": FIRST}],
              prompt_set="talk")  # fmt: skip
    server = ModelServerStub(served_models=(serving_version.name,))
    server.stream_piece_seconds = 0.02
    with server.running():
        settings.VLLM_BASE_URL = server.url
        watched = Watched(browser, live_server)
        watched.log_in("ann", "ann-password-1")
        page = watched.page
        page.click("label:has(> input[name=strength][value='1'])")
        page.click("button[name=choice][value=left]")
        page.wait_for_selector("[data-testid=next-turn]")
        page.fill("textarea[name=message]", HOSTILE)
        page.click("[data-testid=next-turn-send]")
        page.wait_for_selector("[data-testid=answer-left]")
        page.wait_for_load_state("networkidle")

        watched.assert_inert("/ after a continued conversation")
        assert page.locator("#pair img, #pair script, #pair svg, #pair iframe").count() == 0
        assert page.locator("#pair a[href^='javascript']").count() == 0
        assert watched.violations() == []
        assert Continuation.objects.get().prompt.messages[-1]["content"] == HOSTILE.strip()
        watched.close()
