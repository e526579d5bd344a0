"""The leaderboard page and API, on head-to-head votes given through the annotation services."""

import json
import math
import re
import uuid

import numpy as np
import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.annotation import services
from annotate.data import imports
from annotate.leaderboard.ratings import leaderboard_compute
from annotate.leaderboard.selectors import head_to_head_votes, leaderboard_standings
from annotate.models import Completion, Judgement, ModelVersion, Pair, Prompt
from tests.annotate.browsers import CHROMIUM, CHROMIUM_ARGS, STRICT_CSP

pytestmark = pytest.mark.django_db

# Planted strengths (logits): each round better than its parent.
STRENGTHS = {"base-model": 0.0, "round-1": 0.8, "round-2": 1.6}


@pytest.fixture
def lineage(db):
    base = ModelVersion.objects.create(name="base-model", base_model="/models/base", status="retired")
    first = ModelVersion.objects.create(
        name="round-1", base_model="/models/base", adapter_path="/rounds/1", parent=base, status="retired"
    )
    second = ModelVersion.objects.create(
        name="round-2", base_model="/models/base", adapter_path="/rounds/2", parent=first, status="candidate"
    )
    return {"base-model": base, "round-1": first, "round-2": second}


def head_to_head_pair(first, second, *, texts=("An answer.", "Another answer."), serving=None):
    """A pair whose answers come from two versions, as the head-to-head sampler stores it."""
    prompt = Prompt.objects.create(messages=[{"role": "user", "content": f"Question {uuid.uuid4().hex}?"}])
    completions = [
        Completion.objects.create(prompt=prompt, model_version=version, text=text, seed=seed, sampling={"seed": seed})
        for seed, (version, text) in enumerate(zip((first, second), texts, strict=True))
    ]
    return Pair.objects.create(
        prompt=prompt,
        completion_a=completions[0],
        completion_b=completions[1],
        sampled_from=serving or first,
        judgements_required=1,
    )


def vote_everything(annotator, rng, strengths):
    """The annotator leases every pair they may see and votes by the Bradley-Terry model with these strengths,
    on screen sides as the page sends them. Returns the number of votes."""
    count = 0
    while (assignment := services.assignment_lease_next(annotator=annotator)) is not None:
        left, right = assignment.left.model_version.name, assignment.right.model_version.name
        left_wins = 1 / (1 + math.exp(-(strengths[left] - strengths[right])))
        draw = rng.random()
        decided = "left" if rng.random() < left_wins else "right"
        choice = "tie" if draw < 0.08 else "both_bad" if draw < 0.12 else decided
        services.judgement_record(
            annotator=annotator,
            pair_id=assignment.pair_id,
            choice=choice,
            strength=2 if choice in ("left", "right") else None,
            rationale="",
            idempotency_key=uuid.uuid4(),
        )
        count += 1
    return count


@pytest.fixture
def votes(lineage, annotator, other_annotator, make_pair, settings):
    """120 head-to-head votes among the three versions, plus votes that must not count: an ordinary pair from
    one version, and an imported pair of one external version."""
    settings.LEADERBOARD_BOOTSTRAP_ROUNDS = 50
    versions = list(lineage.values())
    for number in range(60):
        first, second = versions[number % 3], versions[(number + 1 + number // 3 % 2) % 3]
        head_to_head_pair(first, second, texts=(f"Answer {number} from A.", f"Answer {number} from B."))
    ordinary = make_pair()
    rows = '{"prompt": "Imported question?", "chosen": "Good answer.", "rejected": "Bad answer."}'
    imports.preferences_import(
        preference_file=imports.parse_preferences(rows, dataset_format="trl"), dataset_format="trl", file_name="x"
    )
    rng = np.random.default_rng(4)
    given = vote_everything(annotator, rng, {**STRENGTHS, ordinary.sampled_from.name: 0.0})
    given += vote_everything(other_annotator, rng, STRENGTHS)
    return given


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def staff_api(staff):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    return api


# --- Who may see it -----------------------------------------------------------------------------------------


def test_the_page_is_for_staff_only(client, annotator, staff):
    response = client.get("/leaderboard/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    client.force_login(annotator)
    assert client.get("/leaderboard/").status_code == 403
    client.force_login(staff)
    assert client.get("/leaderboard/").status_code == 200


def test_the_api_is_for_staff_only(annotator, staff):
    anonymous = APIClient().get("/api/leaderboard/")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == "Token"
    as_annotator = APIClient()
    as_annotator.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=annotator).key}")
    response = as_annotator.get("/api/leaderboard/")
    assert response.status_code == 403 and "detail" in response.json()
    as_staff = APIClient()
    as_staff.force_authenticate(staff)
    assert as_staff.get("/api/leaderboard/").status_code == 200


# --- What it shows ------------------------------------------------------------------------------------------


def test_only_votes_between_two_versions_count(votes, lineage):
    head_to_head = head_to_head_votes()
    # Every pair got one vote: 60 head-to-head, one ordinary pair, one imported pair (imported with its vote).
    assert votes == 61 and Judgement.objects.count() == 62
    assert Judgement.objects.filter(source="imported").count() == 1
    assert len(head_to_head) == 60
    names = {str(version.pk) for version in lineage.values()}
    assert all({vote.version_a, vote.version_b} <= names for vote in head_to_head)


def test_api_ratings_follow_the_planted_strengths(votes, staff_api, lineage):
    body = staff_api.get("/api/leaderboard/").json()
    assert body["reference"] == "base-model" and body["votes"] == 60 and body["bootstrap_rounds"] == 50
    assert [version["name"] for version in body["versions"]] == ["round-2", "round-1", "base-model"]
    reference = body["versions"][-1]
    assert reference["rating"] | {"rank": None} == {"rating": 1000.0, "lower": 1000.0, "upper": 1000.0, "rank": None}
    for version in body["versions"]:
        rating = version["rating"]
        assert rating["lower"] <= rating["rating"] <= rating["upper"]
        above = [other for other in body["versions"] if other["rating"]["lower"] > rating["upper"]]
        assert rating["rank"] == 1 + len(above)
        assert version["length_controlled"] is None
    assert body["versions"][0]["rating"]["lower"] > 1000  # round-2 clearly above the base
    assert body["versions"][0]["rating"]["rank"] == 1 and reference["rating"]["rank"] > 1
    assert body["versions"][0]["parent_version"] == "round-1" and body["versions"][0]["status"] == "candidate"
    assert body["length_effect"] is None and body["unconnected"] == []

    # The same numbers as the pure function on the same votes.
    board = leaderboard_compute(head_to_head_votes(), anchor=str(lineage["base-model"].pk), bootstrap_rounds=50)
    by_id = {rating.version: rating for rating in board.ratings}
    for version in body["versions"]:
        assert version["rating"]["rating"] == pytest.approx(by_id[str(version["id"])].rating)
        assert version["rating"]["upper"] == pytest.approx(by_id[str(version["id"])].upper)

    # The matrix: both directions of every compared pair, counts adding up.
    cells = {(cell["version"], cell["opponent"]): cell for cell in body["matrix"]}
    assert len(cells) == 6
    there, back = cells["round-2", "base-model"], cells["base-model", "round-2"]
    assert there["votes"] == back["votes"] and there["wins"] == back["losses"] and there["ties"] == back["ties"]
    assert there["win_rate"] + back["win_rate"] == pytest.approx(1.0)
    assert sum(cell["votes"] for cell in body["matrix"]) == 2 * 60
    assert sum(version["record"]["votes"] for version in body["versions"]) == 2 * 60


def test_api_length_control_and_bad_parameters(votes, staff_api):
    body = staff_api.get("/api/leaderboard/?length_control=true").json()
    assert set(body["length_effect"]) == {"coefficient", "lower", "upper", "points_twice_as_long"}
    effect = body["length_effect"]
    assert effect["lower"] <= effect["coefficient"] <= effect["upper"]
    assert all(version["length_controlled"]["rank"] >= 1 for version in body["versions"])

    response = staff_api.get("/api/leaderboard/?length_control=perhaps")
    assert response.status_code == 400
    assert "length_control" in response.json()["errors"]


def test_page_shows_table_matrix_and_chart_data(votes, staff_client):
    response = staff_client.get("/leaderboard/")
    assert response.status_code == 200
    page = response.content.decode()
    rows = re.findall(r'<tr data-version="[\w-]+">\s*<td>(\d+)</td>\s*<td>([\w-]+)', page)
    assert [name for _, name in rows] == ["round-2", "round-1", "base-model"]
    assert 'base-model <span class="hint">(reference)</span>' in page and "60 head-to-head votes" in page
    assert 'id="leaderboard-matrix"' in page and "(20)" in page  # 20 votes between each two versions
    assert "vendor/chartjs/chart-4.6.1.umd.min.js" in page and "pairloop/charts.js" in page
    # Chart data travels as JSON in a data block (no inline script, no inline style).
    spec = json.loads(re.search(r'<script id="leaderboard-lineage-chart" type="application/json">(.*?)</script>',
                                page, re.S).group(1))  # fmt: skip
    assert spec["x"]["categories"] == ["base-model", "round-1", "round-2"]  # along the lineage
    assert spec["series"][0]["line"] is False  # dots with whiskers: versions are no time series, even in one chain
    values, intervals = spec["series"][0]["values"], spec["series"][0]["intervals"]
    assert values[0] == 1000.0 and values[0] < values[1] < values[2]
    assert all(low <= value <= high for value, (low, high) in zip(values, intervals, strict=True))
    assert "style=" not in page.split('id="leaderboard"')[1]
    assert not re.search(r"<script(?![^>]*(src=|application/json))", page)


def test_page_length_control_as_a_fragment_and_bad_parameters(votes, staff_client):
    response = staff_client.get("/leaderboard/?length_control=1", headers={"HX-Request": "true"})
    fragment = response.content.decode()
    assert response.status_code == 200
    assert fragment.lstrip().startswith('<section id="leaderboard"') and "<html" not in fragment
    assert "Length-controlled rating" in fragment and 'id="length-effect"' in fragment
    spec = json.loads(re.search(r'type="application/json">(.*?)</script>', fragment, re.S).group(1))
    assert [series["label"] for series in spec["series"]] == ["Rating", "Length-controlled rating"]

    response = staff_client.get("/leaderboard/?length_control=maybe")
    assert response.status_code == 400
    assert "length_control" in response.content.decode() and "Select a valid choice" in response.content.decode()


def test_a_new_vote_shows_at_once(votes, lineage, staff_api, django_user_model):
    before = staff_api.get("/api/leaderboard/").json()
    voter = django_user_model.objects.create_user("late-voter")
    head_to_head_pair(lineage["base-model"], lineage["round-2"])
    assert vote_everything(voter, np.random.default_rng(0), STRENGTHS) == 1
    after = staff_api.get("/api/leaderboard/").json()
    assert after["votes"] == before["votes"] + 1
    assert sum(cell["votes"] for cell in after["matrix"]) == 2 * 61


def test_empty_leaderboard(staff_client, staff_api, make_pair, annotator):
    make_pair()
    services.judgement_record(
        annotator=annotator,
        pair_id=services.assignment_lease_next(annotator=annotator).pair_id,
        choice="left",
        strength=1,
        rationale="",
        idempotency_key=uuid.uuid4(),
    )
    assert "No head-to-head votes yet" in staff_client.get("/leaderboard/").content.decode()
    body = staff_api.get("/api/leaderboard/").json()
    assert body["versions"] == [] and body["reference"] is None and body["votes"] == 0


def test_a_branching_lineage_and_an_unconnected_version(lineage, annotator, settings):
    settings.LEADERBOARD_BOOTSTRAP_ROUNDS = 20
    sibling = ModelVersion.objects.create(
        name="round-2b", base_model="/models/base", adapter_path="/rounds/2b", parent=lineage["round-1"],
        status="rejected",
    )  # fmt: skip
    island = [ModelVersion.objects.create(name=f"island-{n}", base_model="other", status="external") for n in (1, 2)]
    for first, second in [("base-model", "round-1"), ("round-1", "round-2"), ("round-1", "round-2b")] * 3:
        head_to_head_pair(lineage.get(first, sibling), lineage.get(second, sibling))
    head_to_head_pair(*island)
    vote_everything(annotator, np.random.default_rng(1), {**STRENGTHS, "round-2b": -1.0, "island-1": 0, "island-2": 0})

    board = leaderboard_standings()
    assert board.lineage_chart["x"]["categories"] == ["base-model", "round-1", "round-2", "round-2b"]
    assert board.lineage_chart["series"][0]["line"] is False  # round-2b is round-2's sibling, not its child
    assert [version.name for version in board.unconnected] == ["island-1", "island-2"]
    assert {standing.version.name for standing in board.standings} == {"base-model", "round-1", "round-2", "round-2b"}


# --- In a real browser, under a Content-Security-Policy that allows only our own origin ----------------------

LINEAGE = "canvas[data-chart-spec=leaderboard-lineage-chart]"
HTMX_INDICATOR_STYLE = "sha256-faU7yAF8NxuMTNEwVmBz+VcYeIoBQ2EMHW3WaVxCvnk="


def chart_labels(page):
    return page.evaluate(f"Chart.getChart(document.querySelector('{LINEAGE}')).data.datasets.map(d => d.label)")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_the_chart_draws_under_a_strict_csp_and_redraws_after_an_htmx_swap(live_server, lineage, staff, annotator):
    from playwright.sync_api import sync_playwright

    for first, second in [("base-model", "round-1"), ("round-1", "round-2"), ("base-model", "round-2")] * 4:
        head_to_head_pair(lineage[first], lineage[second])
    vote_everything(annotator, np.random.default_rng(2), STRENGTHS)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        problems = []
        page.on("console", lambda message: message.type == "error" and problems.append(message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))

        def with_csp(route):
            response = route.fetch()
            route.fulfill(response=response, headers={**response.headers, "content-security-policy": STRICT_CSP})

        page.route(f"{live_server.url}/**", with_csp)
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("input[name=username]", "sam")
        page.fill("input[name=password]", "sam-password-1")
        page.click("button[type=submit]")
        page.goto(f"{live_server.url}/leaderboard/")
        page.wait_for_load_state("load")
        page.wait_for_function(f"window.Chart && Chart.getChart(document.querySelector('{LINEAGE}'))")
        assert chart_labels(page) == ["Rating", "Rating (interval)"]
        page.evaluate("window.notReloaded = true")

        page.click("text=Control for answer length")
        page.wait_for_selector("#length-effect")
        page.wait_for_function(f"Chart.getChart(document.querySelector('{LINEAGE}'))")
        controlled = "Length-controlled rating"
        assert chart_labels(page) == ["Rating", "Rating (interval)", controlled, f"{controlled} (interval)"]
        assert page.evaluate("window.notReloaded") is True and page.url.endswith("/leaderboard/?length_control=1")
        # The same function draws a plain line chart on a numeric axis (the round page's loss per step).
        drawn = page.evaluate("""() => {
            const canvas = document.createElement("canvas");
            document.querySelector("#leaderboard").append(canvas);
            const chart = PairloopCharts.lineChart(canvas, {title: "Loss", x: {label: "step", values: [1, 2, 4]},
                y: {label: "loss"}, series: [{label: "loss", values: [0.69, 0.61, 0.52]}]});
            return [chart.scales.x.type, chart.scales.x.max, chart.data.datasets.length, chart.scales.y.min > 0];
        }""")
        assert drawn == ["linear", 4, 1, True]
        # htmx adds its indicator <style> to every page unless base.html's htmx-config sets includeIndicatorStyles
        # to false: a base-template matter, left to the Content-Security-Policy work; nothing else may be refused.
        assert [problem for problem in problems if HTMX_INDICATOR_STYLE not in problem] == []
        browser.close()


def test_a_rejected_candidate_is_listed_apart_unranked_and_few_votes_are_marked(lineage, annotator, staff_client):
    """round-2 wins most of its votes, but it was rejected: it keeps its rating, below the versions that may serve,
    with no rank; each version has 8 votes, under the 20 that make an interval worth acting on."""
    for first, second in [("base-model", "round-1"), ("round-1", "round-2"), ("base-model", "round-2")] * 4:
        head_to_head_pair(lineage[first], lineage[second])
    vote_everything(annotator, np.random.default_rng(2), {**STRENGTHS, "round-2": 4.0})
    lineage["round-2"].reject()

    page = staff_client.get("/leaderboard/").content.decode()
    table = page.split('id="leaderboard-ratings"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr data-version="([\w-]+)"( class="unranked")?>\s*<td>([^<]+)</td>', table)
    assert {name for name, unranked, _ in rows[:2] if not unranked} == {"round-1", "base-model"}
    assert rows[2][:2] == ("round-2", ' class="unranked"')
    assert rows[0][2] == "1" and rows[1][2] in ("1", "2") and rows[2][2] == "\N{EN DASH}"  # intervals may overlap
    assert table.index("Not ranked: rejected candidates") < table.index('data-version="round-2"')
    assert table.count(">few votes</span>") == 3
    matrix = page.split('id="leaderboard-matrix"', 1)[1].split("</table>", 1)[0]
    assert matrix.count('class="heat heat-none"') == 3  # the diagonal
    cells = re.findall(r'class="heat heat-(\d+)">([\d.]+) <span class="small">\((\d+)\)', matrix)
    assert len(cells) == 6 and all(int(heat) == round(float(rate) * 10) for heat, rate, _ in cells)  # the colour
    # The API reads the same rule: the rejected candidate comes last, with its rating and no rank.
    body = staff_client.get("/api/leaderboard/").json()
    api_rows = [(version["name"], version["rating"]["rank"], version["few_votes"]) for version in body["versions"]]
    page_ranks = {name: None if rank == "\N{EN DASH}" else int(rank) for name, _, rank in rows}
    assert api_rows == [(name, page_ranks[name], True) for name, _, _ in rows]
    assert api_rows[-1][:2] == ("round-2", None)
