"""Every staff page of campaigns, quality, leaderboard and data in a real browser (Debian's Chromium through
Playwright, against a live server), at a desktop window (1400x900) and a phone (390x844): the page never scrolls
sideways; wide tables and long text scroll inside their own box.

The data is reached as users reach it: votes through the annotation services (simulated annotators and the
head-to-head voter of the leaderboard tests), a candidate rejected through its model's transition, an export and
an import run by the worker's task. SCREENSHOT_DIR=<folder> keeps a screenshot of each page at each size there (of
the whole page with SCREENSHOT_FULL_PAGE=1).
"""

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotate import tasks
from annotate.annotation import services
from annotate.annotation.simulation import Profile, SimulatedAnnotator, prefer_shorter, simulated_annotator_judge
from annotate.data import exports, import_jobs
from annotate.data.views import ExportForm
from annotate.judging import services as judging
from annotate.models import Campaign, DataImport, ModelVersion
from tests.annotate.browsers import CHROMIUM, CHROMIUM_ARGS, log_in
from tests.annotate.judge_stand_in import stand_in_judge

from .test_leaderboard import STRENGTHS, head_to_head_pair, vote_everything

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

SIZES = {"desktop": (1400, 900), "phone": (390, 844)}

CHARTS_DRAWN = (
    "[...document.querySelectorAll('canvas[data-chart-spec]')].every(canvas => window.Chart && Chart.getChart(canvas))"
)
WIDTHS = """() => ({page: document.documentElement.scrollWidth, window: window.innerWidth,
                   body: document.body.scrollWidth})"""

LONG_ANSWER = "A long answer with code:\n\n```python\n" + "x = " + " + ".join(["value"] * 60) + "\n```\n"


@pytest.fixture
def staff_world(make_pair, django_user_model, staff, settings, tmp_path, monkeypatch):
    """Votes from five annotators (one always picks left: their votes excluded), a lineage of three versions with
    head-to-head votes (the newest candidate rejected), a done export and a done prompt import."""
    settings.LEADERBOARD_BOOTSTRAP_ROUNDS = 30
    settings.EXPORT_DIR = tmp_path / "exports"
    coin = random.Random(11)
    monkeypatch.setattr(services.secrets, "randbits", lambda bits: coin.getrandbits(bits))
    for number in range(12):
        texts = (f"Short {number}.", LONG_ANSWER if number == 0 else f"A longer answer, number {number}, padded.")
        make_pair(texts=texts if number % 2 else texts[::-1], required=5)
    annotators = [
        SimulatedAnnotator(django_user_model.objects.create_user(name), Profile("careful"))
        for name in ("ada", "bob", "cyd", "dee")
    ]
    annotators.append(SimulatedAnnotator(django_user_model.objects.create_user("zed"), Profile("left-biased", 1.0)))
    simulated_annotator_judge(annotators=annotators, preference=prefer_shorter, limit=1000, rng=random.Random(7))

    base = ModelVersion.objects.create(name="base-model", base_model="/models/base", status="retired")
    first = ModelVersion.objects.create(
        name="round-1", base_model="/models/base", adapter_path="/rounds/1", parent=base, status="retired"
    )
    second = ModelVersion.objects.create(
        name="round-2", base_model="/models/base", adapter_path="/rounds/2", parent=first, status="candidate"
    )
    versions = [base, first, second]
    for number in range(45):
        head_to_head_pair(versions[number % 3], versions[(number + 1) % 3], texts=(f"A{number}.", f"B{number}."))
    voter = django_user_model.objects.create_user("h2h")
    vote_everything(voter, np.random.default_rng(4), {**STRENGTHS, "round-2": 2.4})
    second.reject()

    zed = django_user_model.objects.get(username="zed")
    services.annotator_act(annotator=zed, action="exclude", by=staff, reason="always picks the left answer")
    form = ExportForm({"dataset_format": "trl-preference", "file_format": "jsonl", "combine": "majority",
                       "min_agreement": "0"})  # fmt: skip
    assert form.is_valid(), form.errors
    export = exports.export_request(created_by=staff, dataset_format="trl-preference", file_format="jsonl",
                                    filters=form.to_filters())  # fmt: skip
    tasks.export_run(export.pk)
    upload = SimpleUploadedFile("prompts.txt", b"What is a prompt?\nAnother prompt.\n")
    data_import, _ = import_jobs.data_import_request(
        created_by=staff,
        kind=DataImport.Kind.PROMPTS,
        upload=upload,
        file_format=None,
        options={"prompt_set": "default"},
    )
    tasks.data_import_run(data_import.pk)
    with stand_in_judge() as stand_in:  # an AI judge that always picks the first answer shown: unsure everywhere
        stand_in.mode = "first"
        values = {"url": stand_in.url, "model": "stand-in-judge", "allow_private": True, "enabled": True,
                  "routing_allowed": True, "api_key": "sk-screenshot-0000"}  # fmt: skip
        judge = judging.judge_configure(campaign=Campaign.objects.get(name="default"), values=values, app_hosts=[])
        judging.judge_run(judge_id=judge.pk, limit=12)
    return {"export": export.pk, "import": data_import.pk, "campaign": Campaign.objects.get(name="default").pk}


def _pages(world: dict[str, int]) -> dict[str, str]:
    return {
        "campaigns": "/campaigns/",
        "campaign": f"/campaigns/{world['campaign']}/",
        "campaign-judge": f"/campaigns/{world['campaign']}/judge/",
        "quality": "/quality/",
        "quality-annotator": "/quality/annotators/zed/",
        "leaderboard": "/leaderboard/",
        "exports": "/data/exports/",
        "export": f"/data/exports/{world['export']}/",
        "prompts-import": "/data/prompts/import/",
        "preferences-import": "/data/preferences/import/",
        "import": f"/data/imports/{world['import']}/",
    }


def test_every_staff_page_fits_the_desktop_and_the_phone(staff_world, live_server, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    too_wide = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        log_in(page, live_server.url, "sam", "sam-password-1")
        for size, (width, height) in SIZES.items():
            page.set_viewport_size({"width": width, "height": height})
            for name, url in _pages(staff_world).items():
                response = page.goto(f"{live_server.url}{url}")
                assert response is not None and response.status == 200, (name, size)
                page.wait_for_load_state("load")
                # Measured once every chart has drawn (a drawn chart may widen the page); polled from here, since
                # the strict CSP refuses page.wait_for_function's eval.
                deadline = time.monotonic() + 10
                while not page.evaluate(CHARTS_DRAWN):
                    assert time.monotonic() < deadline, (name, size, "charts never drew")
                    page.wait_for_timeout(50)
                page.screenshot(
                    path=str(shots / f"{name}-{size}.png"), full_page=bool(os.environ.get("SCREENSHOT_FULL_PAGE"))
                )
                widths = page.evaluate(WIDTHS)
                if widths["page"] > widths["window"]:
                    too_wide[f"{name} at {size}"] = widths
        browser.close()
    assert not too_wide, too_wide
