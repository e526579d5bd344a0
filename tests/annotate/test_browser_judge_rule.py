"""The judge rule and the judge-settled pairs nobody checked, in a real browser (Debian's Chromium through
Playwright): the export form's judge rule and weight work without JavaScript-only parts and fit a phone; the quality
page says how many settled pairs remain unchecked after routing stopped. SCREENSHOT_DIR=<folder> keeps the screenshots
(docs/screenshots/ for the docs)."""

import os
from pathlib import Path

import pytest

from annotate.judging import services as judging
from annotate.models import Export
from tests.annotate.browsers import CHROMIUM, signed_in_page

from .test_browser_staff_pages import SIZES, WIDTHS
from .test_judging import configure, pairs, people_vote_on_all, stand_in  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]


def test_the_judge_rule_on_the_export_form_and_the_unchecked_pairs_on_the_quality_page(
    stand_in,  # noqa: F811
    pairs,  # noqa: F811
    annotator,
    staff,
    live_server,
    settings,
    tmp_path,
):
    settings.EXPORT_DIR = tmp_path / "exports"
    pairs(4, gold=True)
    pairs(4)
    people_vote_on_all(annotator, 4)
    judge = configure(stand_in.url)
    judging.judge_run(judge_id=judge.pk, limit=50)
    pairs(3)
    judging.judge_run(judge_id=judge.pk, limit=50)
    judge = configure(stand_in.url, check_share=1.0)
    pairs(6)
    judging.judge_run(judge_id=judge.pk, limit=50)
    people_vote_on_all(annotator, 6, contrary=True)
    judging.judge_run(judge_id=judge.pk, limit=50)  # routing stops: the checks disagree

    shots = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with signed_in_page(live_server.url, "sam", "sam-password-1") as page:
        for size, (width, height) in SIZES.items():
            page.set_viewport_size({"width": width, "height": height})
            page.goto(f"{live_server.url}/quality/#judges")
            unchecked = page.get_by_test_id("settled-unchecked")
            assert "3 pairs settled by the judge alone" in unchecked.inner_text()
            unchecked.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / f"quality-judge-unchecked-{size}.png"))
            page.goto(f"{live_server.url}/data/exports/")
            page.locator("details.more-options summary").click()
            page.select_option("select[name=judge]", "weight")
            page.fill("input[name=judge_weight]", "0.3")
            page.locator("select[name=judge]").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / f"exports-judge-rule-{size}.png"))
            widths = page.evaluate(WIDTHS)
            assert widths["page"] <= widths["window"], (size, widths)
        with page.expect_response(lambda response: "/data/exports/" in response.url) as answer:
            page.locator("form.export-form button[type=submit]").click()
        assert answer.value.status in (200, 303), answer.value.status
        page.wait_for_load_state("load")
    export = Export.objects.get()
    assert export.filters["judge"] == "weight" and export.filters["judge_weight"] == 0.3
