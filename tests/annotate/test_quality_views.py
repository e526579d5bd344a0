"""The vote-quality page, the annotator drill-down with its decisions, and GET /api/quality/: staff only, votes given
through the services as annotators give them, bad filters answered with a 400 naming the field."""

from __future__ import annotations

import json
import random
import re
import uuid

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.annotation import services
from annotate.annotation.simulation import Profile, SimulatedAnnotator, prefer_shorter, simulated_annotator_judge
from annotate.models import AnnotatorAction, Campaign, Judgement, Pair
from annotate.rounds import services as rounds
from tests.annotate.voting import vote_with_edit

pytestmark = pytest.mark.django_db

CAREFUL = ("ada", "bob", "cyd", "dee")
SPAMMER = "zed"


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def staff_api(staff):
    api = APIClient()
    api.force_authenticate(staff)
    return api


@pytest.fixture
def population(make_pair, django_user_model, monkeypatch):
    """Twelve pairs with overlap 5: four careful annotators (the shorter answer wins) and one who always picks left,
    each voting on every pair through the queue. Sides come from a seeded coin, not the service's secret one: with
    an unseeded coin, a careful annotator's left share over 12 votes crosses the position-bias flag by chance in
    about 1 run in 40."""
    coin = random.Random(11)
    monkeypatch.setattr(services.secrets, "randbits", lambda bits: coin.getrandbits(bits))
    for number in range(12):
        texts = (f"Short {number}.", f"A much longer answer, number {number}, with padding.")
        make_pair(texts=texts if number % 2 else texts[::-1], required=5)  # the shorter is A on every other pair
    annotators = [
        SimulatedAnnotator(django_user_model.objects.create_user(name), Profile("careful")) for name in CAREFUL
    ]
    spammer = django_user_model.objects.create_user(SPAMMER)
    annotators.append(SimulatedAnnotator(spammer, Profile("left-biased", 1.0)))
    given = simulated_annotator_judge(annotators=annotators, preference=prefer_shorter, limit=1000,
                                      rng=random.Random(7))  # fmt: skip
    assert given == 60
    return spammer


def _rows(html: str) -> list[str]:
    """The annotator table's usernames, top to bottom."""
    return re.findall(r'<tr data-annotator="([^"]+)"', html)


def _row_html(html: str, username: str) -> str:
    return html.split(f'<tr data-annotator="{username}"', 1)[1].split("</tr>", 1)[0]


def _vote(annotator, side: str, strength: int | None = 2, rationale: str = "") -> Judgement:
    assignment = services.assignment_lease_next(annotator=annotator)
    assert assignment is not None
    return services.judgement_record(annotator=annotator, pair_id=assignment.pair_id, choice=side,
                                     strength=strength if side in ("left", "right") else None,
                                     rationale=rationale, idempotency_key=uuid.uuid4()).judgement  # fmt: skip


# --- Who may see and do what -----------------------------------------------------------------------------------


def test_pages_and_actions_are_for_staff_only(client, annotator, other_annotator, staff):
    pages = ("/quality/", f"/quality/annotators/{other_annotator.username}/")
    action = f"/quality/annotators/{other_annotator.username}/actions/"
    for url in pages:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert client.post(action, {"action": "pause", "reason": "x"}).status_code == 302
    client.force_login(annotator)
    for url in pages:
        assert client.get(url).status_code == 403
    assert client.post(action, {"action": "pause", "reason": "x"}).status_code == 403
    assert not AnnotatorAction.objects.exists()
    assert not services.annotator_is_paused(other_annotator)
    client.force_login(staff)
    for url in pages:
        assert client.get(url).status_code == 200
    assert client.get("/quality/annotators/nobody/").status_code == 404


def test_the_api_is_for_staff_only(annotator, staff):
    anonymous = APIClient().get("/api/quality/")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == "Token"
    as_annotator = APIClient()
    as_annotator.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=annotator).key}")
    assert as_annotator.get("/api/quality/").status_code == 403
    as_staff = APIClient()
    as_staff.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    assert as_staff.get("/api/quality/").status_code == 200


# --- The table --------------------------------------------------------------------------------------------------


def test_the_table_flags_the_spammer_and_not_the_careful(population, staff_client):
    response = staff_client.get("/quality/")
    assert response.status_code == 200
    html = response.content.decode()
    assert _rows(html)[0] == SPAMMER  # most flags first by default
    spammer_row = _row_html(html, SPAMMER)
    # The flag in words, its reason the tooltip; the row coloured as flagged.
    assert (
        ">Position bias</span>" in spammer_row and "picked the left answer in 100% of 12 decisive votes" in spammer_row
    )
    assert html.count(f'<tr data-annotator="{SPAMMER}" class="flagged">') == 1
    assert "p &lt; 0.001" in spammer_row  # the position test's p-value as people read it, not 4.9e-04
    assert "(binomial test, p &lt; 0.001)" in spammer_row and "e-0" not in spammer_row  # the tooltip's too
    for name in CAREFUL:
        assert "Position bias" not in _row_html(html, name)
        assert f'<tr data-annotator="{name}">' in html
    agreement = html.split('id="quality-agreement"', 1)[1].split("</dl>", 1)[0]
    assert "undefined" not in agreement
    assert "<dt>Annotators</dt><dd>5</dd>" in agreement and "12, of which 12 with votes" in agreement
    # Four careful annotators agree throughout: every kappa between two of them is 1.
    kappas = html.split('id="quality-kappas"', 1)[1]
    assert "<td>ada</td><td>bob</td><td>12</td><td>1.000</td>" in kappas


def test_the_api_gives_agreement_and_rows_with_flags(population, staff_api):
    body = staff_api.get("/api/quality/").json()
    assert body["agreement"]["annotators"] == 5 and body["agreement"]["units"] == 12
    assert body["agreement"]["votes"] == 60 and -1 <= body["agreement"]["alpha_nominal"] < 1
    rows = {row["username"]: row for row in body["annotators"]}
    assert rows[SPAMMER]["left_share"] == 1.0 and rows[SPAMMER]["position_p_value"] == pytest.approx(2 * 0.5**12)
    assert "position_bias" in [flag["code"] for flag in rows[SPAMMER]["flags"]]
    assert all(not rows[name]["flags"] for name in CAREFUL)
    assert rows["ada"]["majority_agreement"] == 1.0 and rows["ada"]["votes"] == 12
    assert rows["ada"]["longer_share"] == 0.0 and rows["ada"]["campaign_longer_share"] == pytest.approx(
        sum(row["longer_share"] * row["longer_decisive"] for row in rows.values()) / 60
    )
    assert (rows[SPAMMER]["paused"], rows[SPAMMER]["votes_excluded"]) == (False, False)
    assert len(body["kappas"]) == 10  # every two of five annotators share all twelve pairs


def test_one_annotator_has_no_agreement(make_pair, annotator, staff_client, staff_api):
    make_pair()
    _vote(annotator, "left")
    html = staff_client.get("/quality/").content.decode()
    agreement = html.split('id="quality-agreement"', 1)[1].split("</dl>", 1)[0]
    assert agreement.count("undefined") == 2
    body = staff_api.get("/api/quality/").json()
    assert body["agreement"]["alpha_nominal"] is None and body["agreement"]["annotators"] == 1


def test_sorting_by_any_column_both_ways(population, staff_client, django_user_model, make_pair):
    # A sixth annotator with two votes, all ties: fewest votes, no decisive vote (no left share).
    late = django_user_model.objects.create_user("eve")
    for _ in range(2):
        make_pair(required=1)
    _vote(late, "tie")
    _vote(late, "tie")

    assert _rows(staff_client.get("/quality/?sort=-votes").content.decode())[-1] == "eve"
    assert _rows(staff_client.get("/quality/?sort=annotator").content.decode()) == sorted([*CAREFUL, SPAMMER, "eve"])
    assert _rows(staff_client.get("/quality/?sort=-annotator").content.decode()) == sorted(
        [*CAREFUL, SPAMMER, "eve"], reverse=True
    )
    # Missing values last whichever way: eve has no decisive vote, so no left share.
    by_left_share = _rows(staff_client.get("/quality/?sort=left_share").content.decode())
    assert by_left_share[-2:] == [SPAMMER, "eve"]
    by_left_share_down = _rows(staff_client.get("/quality/?sort=-left_share").content.decode())
    assert by_left_share_down[0] == SPAMMER and by_left_share_down[-1] == "eve"
    assert _rows(staff_client.get("/quality/?sort=-tie_rate").content.decode())[0] == "eve"

    # Every heading is a link that sorts by it; the sorted one turns round and keeps the filters.
    campaign = Campaign.objects.get()
    html = staff_client.get(f"/quality/?sort=votes&campaign={campaign.pk}").content.decode()
    assert _rows(html)[0] == "eve"
    assert f'href="/quality/?campaign={campaign.pk}&amp;sort=-votes"' in html and 'aria-sort="ascending"' in html
    assert f'href="/quality/?campaign={campaign.pk}&amp;sort=annotator"' in html
    for key in ("median_seconds", "gold_accuracy", "self_consistency", "competence", "flags", "standing"):
        assert f'href="/quality/?campaign={campaign.pk}&amp;sort=-{key}"' in html


def test_sorting_through_the_api(population, staff_api):
    names = [row["username"] for row in staff_api.get("/api/quality/?sort=-annotator").json()["annotators"]]
    assert names == sorted([*CAREFUL, SPAMMER], reverse=True)


# What each heading sorts on, read from the API's fields: written out here, not taken from the column table.
SORTED_ON = {
    "annotator": lambda row: row["username"].lower(),
    "flags": lambda row: len(row["flags"]),
    "standing": lambda row: (row["paused"], row["votes_excluded"]),
}


def _expected_order(rows: list[dict], key: str, descending: bool) -> list[str]:
    """Usernames by one column, ties by name, missing values last either way."""
    value_of = SORTED_ON.get(key, lambda row: row[key])
    by_name = sorted(rows, key=lambda row: row["username"].lower())
    known = sorted([row for row in by_name if value_of(row) is not None], key=value_of, reverse=descending)
    return [row["username"] for row in known + [row for row in by_name if value_of(row) is None]]


def test_every_column_the_page_offers_sorts_both_ways_and_the_api_gives_each(
    population, staff, staff_client, staff_api, django_user_model, make_pair
):
    from annotate.quality.columns import QUALITY_COLUMNS, QUALITY_VALUES

    # Values that differ between annotators: a late annotator with a tie and a both-bad (no decisive vote, so no
    # left share), gold pairs, a paused annotator and one whose votes are excluded.
    late = django_user_model.objects.create_user("eve")
    for _ in range(2):
        make_pair(required=1)
    _vote(late, "tie")
    Campaign.objects.filter(name="default").update(edits_allowed=True)  # eve also writes a better answer
    vote_with_edit(late, lambda pair: "Written by eve.", choice="both_bad")
    for pair, expected in zip(Pair.objects.order_by("id")[:3], ["b", "a", "a"], strict=True):  # careful: 2 of 3
        services.pair_mark_gold(pair=pair, expected=expected)
    services.annotator_act(annotator=population, action="pause", by=staff, reason="left on every pair")
    bob = django_user_model.objects.get(username="bob")
    services.annotator_act(annotator=bob, action="exclude", by=staff, reason="checking")

    html = staff_client.get("/quality/").content.decode()
    headings = html.split('id="quality-annotators"', 1)[1].split("</thead>", 1)[0]
    offered = re.findall(r'<th[^>]*><a href="/quality/\?sort=-?([a-z_]+)"[^>]*>([^<]+)</a>', headings)
    assert offered == [(column.name, column.label) for column in QUALITY_COLUMNS]
    body = staff_api.get("/api/quality/").json()
    assert {field for row in body["annotators"] for field in row} == {value.name for value in QUALITY_VALUES}
    schema = staff_api.get("/api/schema/?format=json").json()
    item = schema["components"]["schemas"]["QualityAnnotatorItem"]["properties"]
    assert list(item) == [value.name for value in QUALITY_VALUES]
    parameters = schema["paths"]["/api/quality/"]["get"]["parameters"]
    sorts = next(parameter for parameter in parameters if parameter["name"] == "sort")["schema"]["enum"]

    rows = body["annotators"]
    for key, _ in offered:
        for descending in (False, True):
            sort = f"-{key}" if descending else key
            assert sort in sorts
            expected = _expected_order(rows, key, descending)
            page = staff_client.get(f"/quality/?sort={sort}")
            assert page.status_code == 200
            assert _rows(page.content.decode()) == expected, sort
            assert f'aria-sort="{"descending" if descending else "ascending"}"><a href="/quality/?sort=' in (
                page.content.decode()
            )
            api = staff_api.get(f"/api/quality/?sort={sort}")
            assert api.status_code == 200
            assert [row["username"] for row in api.json()["annotators"]] == expected, sort
    # The orders checked above tell annotators apart: each column but self-consistency (no repeats served here)
    # puts them in another order the other way round.
    for key, _ in offered:
        assert (_expected_order(rows, key, False) != _expected_order(rows, key, True)) == (key != "self_consistency")


def test_filters_narrow_the_votes(
    population, staff_client, staff_api, django_user_model, make_pair, settings, tmp_path
):
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ROUND_MIN_TRAIN_PAIRS = 1
    training_round = rounds.round_start(trigger="api")  # its cut-off: the 60 votes so far
    other = Campaign.objects.create(name="other")
    pair = make_pair(required=1)
    Pair.objects.filter(pk=pair.pk).update(campaign=other)
    late = django_user_model.objects.create_user("eve")
    _vote(late, "left")

    assert staff_api.get("/api/quality/").json()["agreement"]["votes"] == 61
    in_round = staff_api.get(f"/api/quality/?round={training_round.pk}").json()
    assert in_round["agreement"]["votes"] == 60 and "eve" not in [row["username"] for row in in_round["annotators"]]
    in_other = staff_api.get(f"/api/quality/?campaign={other.pk}").json()
    assert [row["username"] for row in in_other["annotators"]] == ["eve"]
    Judgement.objects.filter(annotator=late).update(created_at="2020-01-02T12:00:00Z")
    window = staff_api.get("/api/quality/?date_from=2020-01-01&date_to=2020-01-02").json()
    assert window["agreement"]["votes"] == 1
    assert staff_api.get("/api/quality/?date_to=2020-01-01").json()["agreement"]["votes"] == 0
    # The calendar's ends are valid days and bound nothing.
    assert staff_api.get("/api/quality/?date_from=0001-01-01&date_to=9999-12-31").json()["agreement"]["votes"] == 61
    assert staff_api.get("/api/quality/?date_from=9999-12-31").json()["agreement"]["votes"] == 0
    page = staff_client.get(f"/quality/?campaign={other.pk}&date_to=9999-12-31")
    assert page.status_code == 200 and _rows(page.content.decode()) == ["eve"]
    # The drill-down link keeps the filters.
    assert f'href="/quality/annotators/eve/?campaign={other.pk}&amp;date_to=9999-12-31"' in page.content.decode()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("campaign=abc", "campaign"),
        ("campaign=999999", "campaign"),
        ("date_from=2026-13-01", "date_from"),
        ("date_to=10000-01-01", "date_to"),
        ("date_from=2026-02-01&date_to=2026-01-31", "date_to"),
        ("round=0", "round"),
        ("round=999999", "round"),
        ("round=99999999999999999999", "round"),
        ("round=x", "round"),
        ("sort=password", "sort"),
        ("sort=--votes", "sort"),
    ],
)
def test_bad_filters_are_a_400_naming_the_field(query, field, make_pair, staff_client, staff_api, annotator):
    make_pair()
    _vote(annotator, "left")
    api = staff_api.get(f"/api/quality/?{query}")
    assert api.status_code == 400 and list(api.json()["errors"]) == [field]
    page = staff_client.get(f"/quality/?{query}")
    assert page.status_code == 400 and f"<li>{field}: " in page.content.decode()
    drill_down = staff_client.get(f"/quality/annotators/{annotator.username}/?{query}")
    assert drill_down.status_code == 400 and f"<li>{field}: " in drill_down.content.decode()


def test_the_page_answers_htmx_with_its_fragment(population, staff_client):
    response = staff_client.get("/quality/?sort=annotator", headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith('<section id="quality"') and "<html" not in html


def test_queries_do_not_grow_with_annotators_or_votes(population, staff_client, django_assert_max_num_queries):
    # The session and user, the campaigns for the filter, gold answers, repeats, the votes' fingerprint, the cache,
    # the votes, names, standings; storing the report in the database cache takes three more; the AI judges (none);
    # the written answers' counts per annotator (annotate/quality/edits.py: one query).
    with django_assert_max_num_queries(17):
        assert staff_client.get("/quality/").status_code == 200
    with django_assert_max_num_queries(12):  # the report from the cache: neither the votes nor the names
        assert staff_client.get("/quality/").status_code == 200
    with django_assert_max_num_queries(14):
        assert staff_client.get(f"/quality/annotators/{SPAMMER}/").status_code == 200


def test_the_report_is_computed_once_until_a_vote_changes_it(population, make_pair, staff_client, monkeypatch):
    from annotate.quality import selectors as quality

    estimates = []
    real_competence = quality.competence
    monkeypatch.setattr(quality, "competence", lambda votes: estimates.append(1) or real_competence(votes))
    first = staff_client.get("/quality/").content.decode()
    second = staff_client.get("/quality/").content.decode()
    assert len(estimates) == 1 and _rows(second) == _rows(first)
    api = staff_client.get("/api/quality/")
    assert api.status_code == 200 and len(estimates) == 1  # the API reads the same report

    response = staff_client.post(f"/quality/annotators/{SPAMMER}/actions/",
                                 {"action": "exclude", "reason": "left on every pair"})  # fmt: skip
    assert response.status_code == 303
    assert "votes excluded" in _row_html(staff_client.get("/quality/").content.decode(), SPAMMER)
    assert len(estimates) == 1  # a staff decision is shown at once; the statistics do not depend on it

    make_pair(required=5)
    ada = Judgement.objects.filter(annotator__username="ada").first().annotator
    _vote(ada, "right")
    third = staff_client.get("/quality/").content.decode()
    assert len(estimates) == 2
    assert ">13<" in _row_html(third, "ada") and ">12<" in _row_html(first, "ada")  # her votes, with the new one
    staff_client.get("/quality/?sort=votes")  # another order of the same report
    assert len(estimates) == 2
    staff_client.get("/quality/?date_from=2000-01-01")  # other filters, another report
    assert len(estimates) == 3


# --- The drill-down ---------------------------------------------------------------------------------------------


def test_the_drill_down_shows_votes_as_the_annotator_saw_them(make_pair, annotator, other_annotator, staff,
                                                               staff_client, settings):  # fmt: skip
    settings.REPEAT_MIN_VOTES_BETWEEN = 0
    make_pair(texts=("The short one.", "The long answer, much longer."))
    make_pair()  # a repeat takes the place of a pair the queue would serve
    first = _vote(annotator, "left", 3, rationale="reads better")
    Campaign.objects.update(repeat_rate=1.0)
    repeat = _vote(annotator, "left", 1)
    Campaign.objects.update(repeat_rate=0.0)
    assert repeat.is_repeat and repeat.a_on_left != first.a_on_left
    services.pair_mark_gold(pair=first.pair, expected="a")
    services.annotator_act(annotator=annotator, action="pause", by=staff, reason="first reason")
    services.annotator_act(annotator=annotator, action="resume", by=staff, reason="second reason")

    html = staff_client.get(f"/quality/annotators/{annotator.username}/").content.decode()

    records = html.split('class="card vote-record"')[1:]
    assert len(records) == 2
    newest, oldest = records  # newest first
    assert f'data-vote="{repeat.pk}"' in newest and "repeat (sides swapped)" in newest
    assert f'data-vote="{first.pk}"' in oldest and "reads better" in oldest and "Much better" in oldest
    left_text = "The short one." if first.a_on_left else "The long answer, much longer."
    assert re.search(r"Left · [AB] · chosen</h3><div class=\"markdown\"><p>" + re.escape(left_text), oldest)
    expected_right = first.choice == "a"
    assert ("gold: expected a, right" if expected_right else "gold: expected a, wrong") in oldest
    decisions = html.split('id="quality-decisions"', 1)[1].split("</table>", 1)[0]
    assert decisions.index("second reason") < decisions.index("first reason")  # newest first
    assert "Resumed" in decisions and f"<td>{staff.username}</td>" in decisions
    assert "Question number 1?" in html


def test_votes_are_paginated(make_pair, annotator, staff_client):
    for _ in range(53):
        make_pair(required=1)
        _vote(annotator, "right")
    first_page = staff_client.get(f"/quality/annotators/{annotator.username}/").content.decode()
    assert first_page.count('class="card vote-record"') == 50 and "Page 1 of 2" in first_page
    second_page = staff_client.get(f"/quality/annotators/{annotator.username}/?page=2").content.decode()
    assert second_page.count('class="card vote-record"') == 3
    assert staff_client.get(f"/quality/annotators/{annotator.username}/?page=zzz").status_code == 200


def test_pausing_from_the_drill_down_stops_pairs_and_is_recorded(population, make_pair, staff, staff_client):
    make_pair(required=5)  # a pair the spammer has not seen
    url = f"/quality/annotators/{SPAMMER}/"
    response = staff_client.post(f"{url}actions/", {"action": "pause", "reason": "left every time"})
    assert response.status_code == 303 and response["Location"] == url

    spammer = population
    assert services.assignment_lease_next(annotator=spammer) is None
    decision = AnnotatorAction.objects.get(annotator=spammer)
    assert (decision.action, decision.by, decision.reason) == ("pause", staff, "left every time")
    html = staff_client.get(url).content.decode()
    assert "left every time" in html and 'value="resume"' in html
    assert "paused" in _row_html(staff_client.get("/quality/").content.decode(), SPAMMER)

    staff_client.post(f"{url}actions/", {"action": "resume", "reason": "talked to them"})
    assert services.assignment_lease_next(annotator=spammer) is not None


def test_bad_action_input_shows_an_error_and_changes_nothing(population, staff_client):
    url = f"/quality/annotators/{SPAMMER}/actions/"
    for data, message in (({"action": "pause", "reason": "   "}, "reason: "),
                          ({"action": "pause"}, "reason: "),
                          ({"action": "delete", "reason": "x"}, "action: ")):  # fmt: skip
        response = staff_client.post(url, data)
        assert response.status_code == 400 and message in response.content.decode()
    assert staff_client.get(url).status_code == 405
    assert not AnnotatorAction.objects.exists()
    assert not services.annotator_is_paused(population)


def test_the_action_forms_need_a_csrf_token(population, staff):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    response = client.post(f"/quality/annotators/{SPAMMER}/actions/", {"action": "pause", "reason": "x"})
    assert response.status_code == 403 and not AnnotatorAction.objects.exists()
    page = client.get(f"/quality/annotators/{SPAMMER}/").content.decode()
    assert page.count('name="csrfmiddlewaretoken"') >= 2


def test_excluding_from_the_drill_down_leaves_their_votes_out_of_a_round(
    make_pair, django_user_model, staff, staff_client, settings, tmp_path
):
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ROUND_MIN_TRAIN_PAIRS = 1
    settings.ROUND_HOLDOUT_FRACTION = 0.0
    careful, spammer = (django_user_model.objects.create_user(name) for name in ("careful", SPAMMER))
    for number in range(8):
        make_pair(texts=(f"short {number}", f"a much longer answer {number}"), required=1)
    careful_pairs = {_vote(careful, "left").pair_id for _ in range(4)}
    spammer_pairs = {_vote(spammer, "left").pair_id for _ in range(4)}

    response = staff_client.post(f"/quality/annotators/{SPAMMER}/actions/",
                                 {"action": "exclude", "reason": "left on every pair"})  # fmt: skip
    assert response.status_code == 303
    decision = AnnotatorAction.objects.get(annotator=spammer)
    assert (decision.action, decision.by, decision.reason) == ("exclude", staff, "left on every pair")

    training_round = rounds.round_start(trigger="api", started_by=staff)
    train_path, heldout_path = rounds.round_prepare(training_round)

    training_round.refresh_from_db()
    assert training_round.votes_left_out["votes of excluded annotators"] == 4
    assert sum(training_round.votes_left_out.values()) == 4
    rows = [json.loads(line) for line in train_path.read_text().splitlines() + heldout_path.read_text().splitlines()]
    prompts = {row["prompt"][-1]["content"] for row in rows}
    assert prompts == {Pair.objects.get(pk=pk).prompt.last_user_message for pk in careful_pairs}
    assert not prompts & {Pair.objects.get(pk=pk).prompt.last_user_message for pk in spammer_pairs}
    assert "votes of excluded annotators" in staff_client.get(f"/rounds/{training_round.pk}/").content.decode()
    assert "votes excluded" in _row_html(staff_client.get("/quality/").content.decode(), SPAMMER)


def test_the_schema_describes_the_quality_endpoint(staff_api):
    schema = staff_api.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/quality/"]["get"]
    assert {parameter["name"] for parameter in operation["parameters"]} >= {"campaign", "date_from", "date_to",
                                                                            "round", "sort"}  # fmt: skip
    output = schema["components"]["schemas"]["QualityOutput"]
    assert set(output["properties"]) == {"agreement", "annotators", "kappas"}
    row = schema["components"]["schemas"]["QualityAnnotatorItem"]["properties"]
    assert {"competence", "gold_accuracy", "self_consistency", "flags", "paused", "votes_excluded"} <= set(row)


def test_the_annotator_page_shows_the_evidence_before_the_decisions(population, staff_client):
    page = staff_client.get(f"/quality/annotators/{SPAMMER}/").content.decode()
    assert page.index("<h2>Signals</h2>") < page.index("<h2>Decisions</h2>") < page.index("<h2>Votes</h2>")
    assert page.index('id="quality-flags"') < page.index('name="reason"')
    flags = page.split('id="quality-flags">', 1)[1].split("</dd>", 1)[0]
    assert '<span class="flag">Position bias</span> picked the left answer in 100% of 12 decisive votes' in flags
    assert "position_bias" not in flags
    assert "12 decisive votes, binomial test p &lt; 0.001" in page
