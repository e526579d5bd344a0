"""The staff dashboard: who may see it, where a login lands, and that its numbers are those of votes, pairs and
rounds made through the real services."""

import datetime
import re
import statistics
import time
import uuid
from contextlib import contextmanager
from html.parser import HTMLParser

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from annotate.annotation import services
from annotate.models import Campaign, Completion, Judgement, ModelVersion, Pair, Prompt, TrainingRound
from annotate.rounds import services as rounds
from annotate.rounds.status import round_state
from tests.annotate.browsers import CHROMIUM, CHROMIUM_ARGS, STRICT_CSP

from .conftest import run_round
from .voting import vote_as_annotator

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


class Tables(HTMLParser):
    """The text of every cell of the tables marked with data-testid, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.row: list[str] | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("data-testid"):
            self.current = dict(attrs)["data-testid"]
            self.tables[self.current] = []
        elif tag == "tr" and self.current:
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None and self.row is not None:
            self.row.append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag == "tr" and self.row is not None and self.current:
            self.tables[self.current].append(self.row)
            self.row = None
        elif tag == "table":
            self.current = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def tables_of(response):
    parser = Tables()
    parser.feed(response.content.decode())
    return parser.tables


def vote_on_next(annotator, choice="left", source=Judgement.Source.HUMAN):
    """Lease the next pair as the annotate page does and vote on it; returns the pair voted on."""
    assignment = services.assignment_lease_next(annotator=annotator)
    assert assignment is not None
    services.judgement_record(
        annotator=annotator,
        pair_id=assignment.pair_id,
        choice=choice,
        strength=2 if choice in ("left", "right") else None,
        rationale="",
        idempotency_key=uuid.uuid4(),
        source=source,
    )
    return assignment.pair


def head_to_head_pair(first, second, tokens=(10, 30)):
    """A pair whose answers come from two versions, as the head-to-head sampler stores it."""
    prompt = Prompt.objects.create(messages=[{"role": "user", "content": f"Question {uuid.uuid4().hex}?"}])
    completions = [
        Completion.objects.create(
            prompt=prompt,
            model_version=version,
            text=f"An answer of {count} tokens.",
            seed=count,
            sampling={"seed": count},
            completion_tokens=count,
        )
        for version, count in zip((first, second), tokens, strict=True)
    ]
    return Pair.objects.create(
        prompt=prompt, completion_a=completions[0], completion_b=completions[1], sampled_from=first,
        judgements_required=1,
    )  # fmt: skip


# --- who sees it ------------------------------------------------------------------------------------------------


def test_the_dashboard_is_for_staff_only(client, annotator, staff):
    anonymous = client.get("/dashboard/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/?next=/dashboard/")
    client.force_login(annotator)
    assert client.get("/dashboard/").status_code == 403
    client.force_login(staff)
    page = client.get("/dashboard/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "No head-to-head votes yet" in body and "No rounds yet" in body and "No sampled answers yet" in body
    assert client.post("/dashboard/").status_code == 405


def test_staff_land_on_the_dashboard_and_annotators_on_the_annotate_page(client, annotator, staff, settings):
    # The deployment's LOGIN_REDIRECT_URL points at the start view (see the report of the dashboard work).
    settings.LOGIN_REDIRECT_URL = "start"
    assert client.get("/start/")["Location"].startswith("/accounts/login/")
    landed = client.post("/accounts/login/", {"username": "sam", "password": "sam-password-1"}, follow=True)
    assert landed.redirect_chain[-1] == ("/dashboard/", 302) and landed.status_code == 200
    assert b'<a class="brand" href="/dashboard/">' in landed.content
    client.post("/accounts/logout/")
    landed = client.post("/accounts/login/", {"username": "ann", "password": "ann-password-1"}, follow=True)
    assert landed.redirect_chain[-1] == ("/", 302) and landed.status_code == 200
    assert b'<a class="brand" href="/">' in landed.content and b"Dashboard" not in landed.content


# --- its numbers ------------------------------------------------------------------------------------------------


def test_votes_per_day_and_active_annotators_follow_the_votes(
    staff_client, annotator, other_annotator, django_user_model, make_pair, monkeypatch
):
    simulated = django_user_model.objects.create_user("sim-1")
    for _ in range(6):
        make_pair(required=3)
    real_now = timezone.now
    three_days_ago = real_now() - datetime.timedelta(days=3)
    # Bea votes three days ago (the clock is the one thing moved); Ann and a simulated annotator vote today.
    monkeypatch.setattr(timezone, "now", lambda: three_days_ago)
    for _ in range(2):
        vote_on_next(other_annotator)
    monkeypatch.setattr(timezone, "now", real_now)
    for choice in ("left", "tie", "right"):
        vote_on_next(annotator, choice)
    vote_on_next(simulated, source=Judgement.Source.SIMULATED)
    assert Judgement.objects.count() == 6

    tables = tables_of(staff_client.get("/dashboard/"))
    rows = {row[0]: row[1:] for row in tables["votes-per-day"][1:-1]}
    assert len(rows) == 30
    today, earlier = timezone.localdate(), timezone.localtime(three_days_ago).date()
    assert rows[today.isoformat()] == ["3", "1", "0", "0", "4"]  # human, simulated, imported, AI judge, all
    assert rows[earlier.isoformat()] == ["2", "0", "0", "0", "2"]
    assert sum(int(row[-1]) for row in rows.values()) == 6
    assert tables["votes-per-day"][-1] == ["30 days", "5", "1", "0", "0", ""]
    assert tables["active-annotators"][1:] == [["24 hours", "1", "1"], ["7 days", "2", "1"]]


def test_votes_older_than_thirty_days_and_repeat_checks_are_left_out(
    staff_client, annotator, make_pair, monkeypatch, settings
):
    make_pair(required=1), make_pair(required=1)
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() - datetime.timedelta(days=31))
    vote_on_next(annotator)
    monkeypatch.setattr(timezone, "now", real_now)
    settings.REPEAT_MIN_VOTES_BETWEEN = 0
    Campaign.objects.update(repeat_rate=1.0)
    vote_on_next(annotator)  # the repeat rate deals the earlier pair again, sides swapped, instead of the open one
    assert Judgement.objects.filter(is_repeat=True).count() == 1 and Judgement.objects.count() == 2

    tables = tables_of(staff_client.get("/dashboard/"))
    assert tables["votes-per-day"][-1] == ["30 days", "0", "0", "0", "0", ""]
    assert tables["active-annotators"][1:] == [["24 hours", "1", "0"], ["7 days", "1", "0"]]


def test_ready_pairs_by_campaign_follow_leases_and_votes(staff_client, annotator, other_annotator, make_pair):
    pairs = [make_pair(required=2) for _ in range(3)]
    paused = Campaign.objects.create(name="paused-set", title="Paused set", is_active=False, votes_per_pair=1)
    Campaign.objects.create(name="empty-set", title="Empty set")
    prompt = Prompt.objects.create(
        messages=[{"role": "user", "content": "In the paused set?"}], prompt_set="paused-set"
    )
    first, second = (
        Completion.objects.create(prompt=prompt, model_version=pairs[0].sampled_from, text=text, completion_tokens=7)
        for text in ("one", "two")
    )
    Pair.objects.create(prompt=prompt, completion_a=first, completion_b=second, sampled_from=pairs[0].sampled_from)

    # Ann votes on two pairs and holds the third on her screen; Bea gets that third pair (fewest votes first) and
    # votes on it: of the default set's 6 places 3 are voted and 1 leased, and the third pair has no free place.
    vote_on_next(annotator), vote_on_next(annotator)
    assert services.assignment_lease_next(annotator=annotator) is not None
    vote_on_next(other_annotator)

    rows = tables_of(staff_client.get("/dashboard/"))["ready-pairs"][1:]
    default = Campaign.objects.get(name="default")
    by_name = {row[0]: row[1:] for row in rows}
    assert by_name[default.title or default.name] == ["active", "2", "2"]
    assert by_name["Paused set"] == ["paused", "1", "1"]
    assert by_name["Empty set"] == ["active", "0", "0"]
    assert Pair.objects.open().count() == 3 and paused.pairs.count() == 1


def test_the_leaderboard_and_answer_lengths_match_the_votes(staff_client, annotator, settings):
    settings.LEADERBOARD_BOOTSTRAP_ROUNDS = 30
    base = ModelVersion.objects.create(name="base-model", base_model="/m", status="retired")
    child = ModelVersion.objects.create(name="round-1", base_model="/m", adapter_path="/a", parent=base)
    for number in range(8):
        head_to_head_pair(base, child, tokens=(10 + number, 40 + number))
    voted = 0
    while (assignment := services.assignment_lease_next(annotator=annotator)) is not None:
        # The longer answer (round-1's) wins six votes of eight.
        winner = "round-1" if voted < 6 else "base-model"
        side = "left" if assignment.left.model_version.name == winner else "right"
        services.judgement_record(
            annotator=annotator, pair_id=assignment.pair_id, choice=side, strength=1, rationale="",
            idempotency_key=uuid.uuid4(),
        )  # fmt: skip
        voted += 1
    assert voted == 8

    dashboard = tables_of(staff_client.get("/dashboard/"))
    leaderboard = tables_of(staff_client.get("/leaderboard/"))
    assert "leaderboard" in dashboard
    ranks = {row[1]: row for row in dashboard["leaderboard"][1:]}
    assert ranks["round-1"][-2:] == ["8", "0.75"] and ranks["base-model (reference)"][-2:] == ["8", "0.25"]
    # The same ratings and intervals as the leaderboard page, which reads the same selector.
    rating_then_interval = (
        r"<td>(\d+)(?: <span class=\"few-votes\"[^>]*>few votes</span>)?</td>\s*<td>(\d+ to \d+)</td>"
    )
    page = re.findall(rating_then_interval, staff_client.get("/leaderboard/").content.decode())
    assert [(row[3], row[4]) for row in dashboard["leaderboard"][1:]] == page, leaderboard

    lengths = {row[0]: row[1:] for row in dashboard["answer-lengths"][1:]}
    assert lengths["base-model"] == ["retired", "8", f"{statistics.mean(range(10, 18)):.1f}", "10", "17"]
    assert lengths["round-1"] == ["candidate", "8", f"{statistics.mean(range(40, 48)):.1f}", "40", "47"]


def test_recent_rounds_show_status_and_gate(staff_client, loop, monkeypatch):
    monkeypatch.setenv("SCRIPTED_ACCURACY", "0.41")
    rejected = run_round()
    monkeypatch.setenv("SCRIPTED_ACCURACY", "0.9")
    serving = run_round()
    assert (rejected.status, serving.status) == ("rejected", "serving")
    queued = rounds.round_start(trigger="api")

    rows = tables_of(staff_client.get("/dashboard/"))["recent-rounds"][1:]
    assert [row[0] for row in rows] == [f"Round {queued.pk}", f"Round {serving.pk}", f"Round {rejected.pk}"]
    assert rows[0][1:3] == ["Queued", "\N{EN DASH}"] and rows[0][-1] == "\N{EN DASH}"
    assert rows[1][1:3] == ["Serving", "the offline gate"]
    assert rows[1][5] == serving.result_version.name and rows[1][6] == "0.900"
    assert rows[1][-1].startswith("Offline gate passed: ")
    assert rows[2][1:3] == ["Rejected by the offline gate", "the offline gate"]
    assert rows[2][-1].startswith("Offline gate did not pass: held-out accuracy 0.410")
    assert TrainingRound.objects.count() == 3


def vote_for(annotator, answer):
    """Lease the next pair and vote for answer `answer` (a, b or tie) of it, whichever side of the screen it is on."""
    assignment = services.assignment_lease_next(annotator=annotator)
    assert assignment is not None
    side = "left" if (answer == "a") == assignment.a_on_left else "right"
    services.judgement_record(
        annotator=annotator, pair_id=assignment.pair_id, choice="tie" if answer == "tie" else side,
        strength=None if answer == "tie" else 2, rationale="", idempotency_key=uuid.uuid4(),
    )  # fmt: skip


def test_agreement_over_recent_votes_all_votes_and_each_campaign(
    staff_client, annotator, other_annotator, make_pair, monkeypatch
):
    for _ in range(3):
        make_pair(required=2)
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() - datetime.timedelta(days=10))
    for voter in (annotator, other_annotator):  # ten days ago both agreed on every pair
        for answer in ("a", "b", "tie"):
            vote_for(voter, answer)
    monkeypatch.setattr(timezone, "now", real_now)
    for _ in range(2):
        make_pair(required=2, prompt_set="second")
    vote_for(annotator, "a"), vote_for(annotator, "b")  # today only Ann has voted: nobody to agree with

    header = ["Votes from", "Alpha, nominal", "Alpha, ordinal", "Votes", "Annotators", "Pairs",
              "Pairs with two or more annotators"]  # fmt: skip
    assert tables_of(staff_client.get("/dashboard/"))["agreement"] == [
        header,
        ["Last 7 days", "undefined", "undefined", "2", "1", "2", "0"],
        ["All time", "1.000", "1.000", "8", "2", "5", "3"],
        ["Campaign default", "1.000", "1.000", "6", "2", "3", "3"],
        ["Campaign second", "undefined", "undefined", "2", "1", "2", "0"],
    ]

    vote_for(other_annotator, "a"), vote_for(other_annotator, "a")  # Bea agrees on one pair and not the other
    rows = {row[0]: row[1:] for row in tables_of(staff_client.get("/dashboard/"))["agreement"][1:]}
    assert rows["Last 7 days"][2:] == ["4", "2", "2", "2"]  # the cached figures followed the new votes
    assert float(rows["Last 7 days"][0]) < 1 and rows["Campaign second"] == rows["Last 7 days"]


def test_the_page_reads_a_fixed_number_of_queries(staff_client, annotator, make_pair, django_user_model, settings):
    settings.LEADERBOARD_BOOTSTRAP_ROUNDS = 10
    base = ModelVersion.objects.create(name="base-model", base_model="/m")
    other = ModelVersion.objects.create(name="other", base_model="/m", parent=base)

    def grow(size):
        for number in range(size):
            make_pair(required=1)
            head_to_head_pair(base, other)
            Campaign.objects.create(name=f"set-{size}-{number}")
        voter = django_user_model.objects.create_user(f"voter-{size}")
        while (assignment := services.assignment_lease_next(annotator=voter)) is not None:
            services.judgement_record(
                annotator=voter, pair_id=assignment.pair_id, choice="tie", strength=None, rationale="",
                idempotency_key=uuid.uuid4(),
            )  # fmt: skip

    def queries():
        cache.clear()  # the cached figures (agreement, the model server's health) are read afresh each time
        with CaptureQueriesContext(connection) as captured:
            assert staff_client.get("/dashboard/").status_code == 200
        return len(captured)

    grow(2)
    small = queries()
    grow(8)
    assert queries() == small


# --- in a real browser, under a Content-Security-Policy that allows only our own origin ------------------------

HTMX_INDICATOR_STYLE = "sha256-faU7yAF8NxuMTNEwVmBz+VcYeIoBQ2EMHW3WaVxCvnk="


def in_browser(test):
    marks = [
        pytest.mark.browser,
        pytest.mark.django_db(transaction=True),
        pytest.mark.skipif(
            CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"
        ),
    ]
    for mark in marks:
        test = mark(test)
    return test


def wait_until(page, expression, timeout=10.0):
    """Poll an expression from here: page.wait_for_function polls with eval inside the page, which the strict CSP
    refuses (page.evaluate goes through the debugging protocol, which it does not)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def drawn(page, spec_id):
    return page.evaluate(
        f"""() => {{
            const chart = Chart.getChart(document.querySelector('canvas[data-chart-spec={spec_id}]'));
            return chart ? chart.data.datasets.map(set => [set.label, set.data.map(point => point.y)]) : null;
        }}"""
    )


@contextmanager
def strict_staff_page(live_server, viewport=None):
    """Chromium logged in as staff (sam), every page of the live server under STRICT_CSP, with console errors (CSP
    refusals among them) kept in page.problems."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(**({"viewport": viewport} if viewport else {}))
        page.problems = []
        page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
        page.on("pageerror", lambda error: page.problems.append(str(error)))

        def with_csp(route):
            response = route.fetch()
            route.fulfill(response=response, headers={**response.headers, "content-security-policy": STRICT_CSP})

        page.route(f"{live_server.url}/**", with_csp)
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("input[name=username]", "sam")
        page.fill("input[name=password]", "sam-password-1")
        page.click("button[type=submit]")
        page.wait_for_load_state("load")
        yield page
        browser.close()


@pytest.fixture
def strict_page(live_server):
    with strict_staff_page(live_server) as page:
        yield page


def refused(page):
    # htmx adds its indicator <style> to every page unless base.html's htmx-config turns it off: a base-template
    # matter left to the Content-Security-Policy work (see test_leaderboard.py); nothing else may be refused.
    return [problem for problem in page.problems if HTMX_INDICATOR_STYLE not in problem]


@in_browser
def test_the_dashboard_charts_draw_without_console_errors(staff, annotator, make_pair, settings, live_server, request):
    settings.LEADERBOARD_BOOTSTRAP_ROUNDS = 20
    base = ModelVersion.objects.create(name="base-model", base_model="/m", status="retired")
    child = ModelVersion.objects.create(name="round-1", base_model="/m", adapter_path="/a", parent=base)
    for _ in range(4):
        head_to_head_pair(base, child)
    make_pair(required=1)
    for choice in ("left", "right", "tie", "left", "left"):
        vote_on_next(annotator, choice)
    page = request.getfixturevalue("strict_page")

    page.goto(f"{live_server.url}/dashboard/")
    wait_until(page, "window.Chart && document.querySelectorAll('canvas[data-chart-spec]').length === 3")
    wait_until(
        page, "[...document.querySelectorAll('canvas[data-chart-spec]')].every(canvas => Chart.getChart(canvas))"
    )
    votes = drawn(page, "dashboard-votes-chart")
    assert [label for label, _ in votes] == ["Human annotator"]  # the sources that voted: no empty series
    assert len(votes[0][1]) == 7 and votes[0][1][-1] == 5  # from the first vote on, a week at least
    votes_type = "Chart.getChart(document.querySelector('canvas[data-chart-spec=dashboard-votes-chart]'))"
    assert page.evaluate(f"{votes_type}.data.datasets[0].type") == "bar"  # counts are bars
    assert page.evaluate("Chart.defaults.font.size") >= 12
    assert [label for label, _ in drawn(page, "dashboard-lineage-chart")] == ["Rating", "Rating (interval)"]
    # Versions oldest first: the serving version of make_pair (5 tokens an answer), base-model 10, round-1 30.
    assert drawn(page, "dashboard-length-chart") == [["Mean tokens", [5, 10, 30]]]
    assert page.evaluate("document.querySelector('a.brand').getAttribute('href')") == "/dashboard/"
    assert refused(page) == []


@in_browser
def test_the_round_page_redraws_its_charts_after_each_poll(staff, make_pair, django_user_model, settings, request):
    settings.ROUND_DIR = request.getfixturevalue("tmp_path")
    settings.ROUND_MIN_TRAIN_PAIRS = 2
    voter = django_user_model.objects.create_user("voter")
    for _ in range(2):
        vote_as_annotator(voter, pair=make_pair(), choice="b", strength=1)
    training_round = rounds.round_start(trigger="api")
    training_round.advance(TrainingRound.Status.PREPARING)
    training_round.advance(TrainingRound.Status.TRAINING)
    training_round.record_steps([{"step": 1, "max_steps": 3, "loss": 0.69, "rewards/accuracies": 0.5}])
    page = request.getfixturevalue("strict_page")
    live_server = request.getfixturevalue("live_server")

    page.goto(f"{live_server.url}/rounds/{training_round.pk}/")
    wait_until(page, "window.Chart && Chart.getChart(document.querySelector('canvas[data-chart-spec]'))")
    assert drawn(page, "round-loss-chart") == [["Loss", [0.69]]]
    page.evaluate("window.notReloaded = true")

    # The training worker logs two more steps; the page's 2-second poll swaps the section in and redraws.
    training_round.record_steps([{"step": step, "max_steps": 3, "loss": loss, "rewards/accuracies": accuracy}
                                 for step, loss, accuracy in ((2, 0.61, 0.75), (3, 0.52, 1.0))])  # fmt: skip
    page.wait_for_selector("text=(training is done)", timeout=10_000)  # the last step: the process saves and scores
    loss_points = "Chart.getChart(document.querySelector('canvas[data-chart-spec=round-loss-chart]'))?.data.datasets[0]"
    wait_until(page, f"{loss_points}?.data.length === 3")
    assert drawn(page, "round-loss-chart") == [["Loss", [0.69, 0.61, 0.52]]]
    assert drawn(page, "round-reward-accuracy-chart") == [["Reward accuracy (training batches)", [0.5, 0.75, 1.0]]]
    assert page.evaluate("window.notReloaded") is True  # htmx swapped the section; the page did not reload
    # No inline style anywhere (the progress bar is a <progress> element): the CSP refuses nothing.
    served = page.request.get(f"{live_server.url}/rounds/{training_round.pk}/").text()
    assert re.findall(r'<[^>]* style="[^"]*"', served) == []
    assert refused(page) == []


def test_the_summary_comes_first_with_what_staff_decide_on(staff_client, loop, settings):
    served = run_round()  # the loop fixture's eight votes, cast today; the round passes the gate and serves
    page = staff_client.get("/dashboard/").content.decode()

    assert page.index('data-testid="summary"') < page.index('id="votes-heading"')
    assert f'data-testid="summary-serving">{served.result_version.name}<' in page
    assert re.search(r'data-testid="summary-votes-today">8<', page)
    assert re.search(r'data-testid="summary-ready">0 ', page)  # every pair the fixture made got its vote
    assert re.search(rf'Round {served.pk}</a> <span class="status status-good" data-testid="summary-round-status">'
                     r"Serving<", page)  # fmt: skip
    assert '<span class="health-up">up</span>' in page and "1 of 1 replica answers" in page

    settings.VLLM_BASE_URL = "http://127.0.0.1:9"  # nothing listens: a server still loading, or gone
    cache.clear()
    page = staff_client.get("/dashboard/").content.decode()
    assert '<span class="health-down">not answering</span>' in page and "0 of 1 replica answer;" in page


# --- the same summary through the API ---------------------------------------------------------------------------


def api_of(user):
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_the_api_summary_is_the_pages(staff_client, staff, loop, settings):
    served = run_round()  # as above: eight votes today, a round that passed its gate and serves
    summary = api_of(staff).get("/api/dashboard/")
    decided_by = round_state(served).decided_by  # what the round page says decided it
    assert decided_by

    assert summary.status_code == 200
    assert summary.json() == {
        "serving": {"id": served.result_version.pk, "name": served.result_version.name},
        "ready_pairs": 0,
        "votes_today": 8,
        "latest_round": {
            "id": served.pk, "status": "serving", "headline": "Serving", "tone": "good",
            "decided_by": decided_by, "phase": None,
        },
        "model_server": {"up": True, "answering": 1, "replicas": 1},
    }  # fmt: skip
    page = staff_client.get("/dashboard/").content.decode()
    assert f"decided by {decided_by}" in page

    settings.VLLM_BASE_URL = "http://127.0.0.1:9"  # nothing listens
    cache.clear()
    assert api_of(staff).get("/api/dashboard/").json()["model_server"] == {"up": False, "answering": 0, "replicas": 1}


def test_the_api_summary_of_a_new_deployment_and_of_a_running_round(
    staff, serving_version, settings, make_pair, django_user_model, tmp_path
):
    settings.VLLM_BASE_URL = "http://127.0.0.1:9"
    settings.ROUND_DIR = tmp_path
    settings.ROUND_MIN_TRAIN_PAIRS = 2
    make_pair(required=1)
    empty = api_of(staff).get("/api/dashboard/").json()
    assert empty["latest_round"] is None and empty["votes_today"] == 0 and empty["ready_pairs"] == 1
    assert empty["serving"] == {"id": serving_version.pk, "name": serving_version.name}

    voter = django_user_model.objects.create_user("voter")
    make_pair(required=1)
    for _ in range(2):
        vote_as_annotator(voter, choice="b", strength=1)
    training_round = rounds.round_start(trigger="api")
    training_round.advance(TrainingRound.Status.PREPARING)
    training_round.advance(TrainingRound.Status.TRAINING)
    training_round.record_steps([{"step": 1, "max_steps": 3, "loss": 0.69, "rewards/accuracies": 0.5}])
    latest = api_of(staff).get("/api/dashboard/").json()["latest_round"]
    assert (latest["id"], latest["status"], latest["decided_by"]) == (training_round.pk, "training", "")
    assert (latest["phase"]["step"], latest["phase"]["max_steps"]) == (1, 3) and latest["phase"]["text"]


def test_the_api_summary_is_for_staff_only(annotator):
    assert APIClient().get("/api/dashboard/").status_code == 401
    assert api_of(annotator).get("/api/dashboard/").status_code == 403
