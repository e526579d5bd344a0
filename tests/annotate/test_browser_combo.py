"""Issue 19 together in Chromium, with the keyboard alone: in a campaign of 3 answers per pair with written answers
and multi-turn on, the annotator ranks, writes a better version of the answer ranked first (D, Esc, Z), saves both
(Enter), continues the conversation (T), watches the answers stream in and ranks the continued pair of 3.

With SCREENSHOT_DIR set, the screenshots of the ranking form with the box open land there (docs/screenshots/)."""

import pytest

from annotate.models import Campaign, Continuation, HumanAnswer, Judgement, Prompt
from annotate.sampling import services as sampling
from tests.annotate.browsers import CHROMIUM
from tests.annotate.model_server_stub import ModelServerStub
from tests.annotate.ranking_pairs import sample
from tests.annotate.test_browser_annotate import NO_SIDEWAYS_SCROLL, SIZES, open_annotate, screenshot_path, swapped_in
from tests.annotate.test_browser_rank import RANK_FORM, browser  # noqa: F401 (browser: the same Chromium fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

ANSWERS = [
    "Boil the kettle and pour it over the leaves.",
    "Warm the pot, one spoon of leaves per cup, water just off the boil, steep 3-5 minutes.",
    "Use a bag.",
]
ADDED = " Take the leaves out after that."
NEXT = "And green tea?"


@pytest.fixture
def campaign(settings, serving_version, annotator):
    Campaign.objects.create(name="tea", title="Tea", answers_per_pair=3, edits_allowed=True, continuation_allowed=True)
    prompt = Prompt.objects.create(messages=[{"role": "user", "content": "How do I brew tea?"}], prompt_set="tea")
    pair = sampling.pair_create(
        prompt=prompt,
        version=serving_version,
        first=sample(ANSWERS[0]),
        second=sample(ANSWERS[1]),
        extra=[(serving_version, sample(ANSWERS[2]))],
    )
    server = ModelServerStub(served_models=(serving_version.name,))
    server.stream_piece_seconds = 0.05
    with server.running():
        settings.VLLM_BASE_URL = server.url
        yield pair


def on_screen(page) -> list[str]:
    return [page.inner_text(f"[data-testid=answer-{number}] .markdown").strip() for number in (1, 2, 3)]


@pytest.mark.parametrize("size", SIZES)
def test_rank_write_and_continue_with_the_keyboard_alone(browser, live_server, campaign, tmp_path, size):  # noqa: F811
    page = open_annotate(browser, live_server, size, ready=RANK_FORM)
    page.evaluate("window.notReloaded = true")
    shown = on_screen(page)
    best = ANSWERS[1]
    number = shown.index(best) + 1
    for key in [str(number), *(str(other) for other in (1, 2, 3) if other != number)]:
        page.keyboard.press(key)  # the best answer first, then the others in screen order

    page.keyboard.press("d")  # the box opens with the cursor in it
    assert page.evaluate("document.activeElement.name") == "edit"
    page.keyboard.press("Escape")
    page.keyboard.press("z")  # the answer ranked 1, copied in to edit
    assert page.input_value("[data-testid=edit-text]") == best
    page.keyboard.press("End")
    page.keyboard.type(ADDED)
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    page.screenshot(path=screenshot_path(tmp_path, f"annotate-rank-edit-{size}"))
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")  # the ranking and the written answer, sent together

    swapped_in(page, "[data-testid=next-turn]")
    written = HumanAnswer.objects.get()
    assert written.text == best + ADDED and written.started_from.text == best
    assert written.judgement.ranking[1] == 1  # B (the best) ranked first

    page.keyboard.press("t")
    page.keyboard.type(NEXT)
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    swapped_in(page, RANK_FORM)  # streamed, stored, and dealt: the continued pair, to rank
    continuation = Continuation.objects.get()
    assert continuation.prompt.messages[1] == {"role": "assistant", "content": best + ADDED}
    assert continuation.pair.answer_count == 3
    for key in ("3", "1", "2"):
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    swapped_in(page, "[data-testid=next-turn]")
    assert Judgement.objects.get(pair=continuation.pair).ranking is not None
    assert page.evaluate("window.notReloaded") is True
    page.close()
