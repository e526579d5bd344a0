"""The judge's staff page, its part of the quality page and its API: settings through a plain form and PUT, the key
never shown back in full, bad input a 400 that changes nothing, and the measured trust and routing state shown."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate.judging import services as judging
from annotate.models import Campaign, Judge
from tests.annotate.judge_stand_in import stand_in_judge
from tests.annotate.test_judging import CAMPAIGN, configure, people_vote_on_all

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "sk-very-secret-key-98765"


@pytest.fixture
def campaign(make_pair) -> Campaign:
    make_pair(prompt_set=CAMPAIGN)
    return Campaign.objects.get(name=CAMPAIGN)


@pytest.fixture
def staff_api(staff) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    return client


def form(**changes: str) -> dict[str, str]:
    return {"url": "http://127.0.0.1:8100/v1", "model": "judge-model", "api_key": KEY, "allow_private": "true",
            "prompt_version": "v1", "min_evidence": "20", **changes}  # fmt: skip


def test_staff_set_a_judge_through_the_form_and_the_key_is_never_shown_back(client, staff, campaign):
    client.force_login(staff)
    page = client.get(f"/campaigns/{campaign.pk}/judge/")
    assert page.status_code == 200 and b"AI judge of" in page.content

    saved = client.post(f"/campaigns/{campaign.pk}/judge/", form())

    assert saved.status_code == 303
    judge = Judge.objects.get(campaign=campaign)
    assert judge.api_key == KEY and judge.enabled is False and judge.routing_allowed is False  # off by default
    shown = client.get(f"/campaigns/{campaign.pk}/judge/").content.decode()
    assert KEY not in shown and "…8765" in shown
    # An empty key field keeps the key; the box removes it.
    client.post(f"/campaigns/{campaign.pk}/judge/", form(api_key="", model="other"))
    judge.refresh_from_db()
    assert judge.api_key == KEY and judge.model == "other"
    client.post(f"/campaigns/{campaign.pk}/judge/", form(api_key="", remove_key="1"))
    judge.refresh_from_db()
    assert judge.api_key == ""
    assert "AI judge" in client.get(f"/campaigns/{campaign.pk}/").content.decode()


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"url": "http://127.0.0.1:8100/v1", "allow_private": ""}, "private"),
        ({"url": "http://testserver/v1"}, "this app itself"),
        ({"url": "javascript:alert(1)"}, "http"),
        ({"min_confidence": "1.5"}, "less than or equal to 1"),
        ({"min_evidence": "zero"}, "valid integer"),
        ({"prompt_template": "{prompt} {first} {second} {__import__}"}, "unknown fields"),
        ({"url": "http://example.com/" + "x" * 600}, "500"),
    ],
)
def test_bad_settings_are_a_400_that_changes_nothing(client, staff, campaign, changes, words):
    client.force_login(staff)
    client.post(f"/campaigns/{campaign.pk}/judge/", form())
    before = Judge.objects.values().get()

    refused = client.post(f"/campaigns/{campaign.pk}/judge/", form(model="changed", **changes))

    assert refused.status_code == 400
    assert words in refused.content.decode()
    assert Judge.objects.values().get() == before


def test_the_api_sets_reads_and_runs_a_judge_with_the_key_masked(staff_api, campaign):
    assert staff_api.get(f"/api/campaigns/{campaign.pk}/judge/").status_code == 404
    answer = staff_api.put(
        f"/api/campaigns/{campaign.pk}/judge/",
        {"url": "http://127.0.0.1:8100/v1", "model": "m", "api_key": KEY, "allow_private": True},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert KEY not in answer.content.decode() and body["api_key"] == "…8765"
    assert body["enabled"] is False and body["routing_active"] is False and body["trust"] == []
    assert "gold pairs" in body["routing_refusal"]
    assert staff_api.post(f"/api/campaigns/{campaign.pk}/judge/run/").status_code == 409  # it is off
    refused = staff_api.put(
        f"/api/campaigns/{campaign.pk}/judge/", {"url": "http://10.0.0.1/v1", "model": "m"}, format="json"
    )
    assert refused.status_code == 400 and "private" in str(refused.json())
    assert Judge.objects.get().url == "http://127.0.0.1:8100/v1"
    assert staff_api.get(f"/api/campaigns/{campaign.pk}/judge/verdicts/").json()["count"] == 0


def test_the_quality_page_shows_the_judge_as_one_more_annotator_and_the_votes_it_saved(
    client, staff, annotator, make_pair, staff_api
):
    from annotate.annotation import services as annotation
    from tests.annotate.test_judging import BAD, GOOD

    for index in range(8):
        texts = (GOOD, BAD) if index % 2 == 0 else (BAD, GOOD)
        pair = make_pair(texts=texts, prompt_set=CAMPAIGN)
        if index < 4:
            annotation.pair_mark_gold(pair=pair, expected="a" if index % 2 == 0 else "b")
    people_vote_on_all(annotator, 4)
    for index in range(5):
        make_pair(texts=(GOOD, BAD) if index % 2 == 0 else (BAD, GOOD), prompt_set=CAMPAIGN)
    with stand_in_judge() as stand_in:
        judge = configure(stand_in.url)
        judging.judge_run(judge_id=judge.pk, limit=50)
    client.force_login(staff)

    page = client.get("/quality/").content.decode()

    assert "AI judges" in page and "Routing on" in page
    assert "People&#x27;s votes saved: <strong>5</strong>" in page or "votes saved: <strong>5</strong>" in page
    assert "1.000" in page  # kappa with people
    body = staff_api.get(f"/api/campaigns/{judge.campaign_id}/judge/").json()
    assert body["routing_active"] is True and body["routing_refusal"] is None
    assert body["trust"][0]["votes_saved"] == 5 and body["trust"][0]["gold_accuracy"] == 1.0
    verdicts = staff_api.get(f"/api/campaigns/{judge.campaign_id}/judge/verdicts/").json()
    assert verdicts["count"] == 13 and verdicts["results"][0]["endpoint"] == stand_in.url


def test_the_judge_is_shown_to_annotators_only_when_the_campaign_asks_and_the_page_says_so(
    client, annotator, other_annotator, staff, make_pair
):
    import re

    from annotate.models import JudgeHint
    from tests.annotate.test_judging import BAD, GOOD

    for _ in range(2):
        make_pair(texts=(GOOD, BAD), prompt_set=CAMPAIGN)
    with stand_in_judge() as stand_in:
        judge = configure(stand_in.url, routing_allowed=False)
        judging.judge_run(judge_id=judge.pk, limit=10)
    client.force_login(annotator)
    hidden = client.get("/").content.decode()
    assert 'data-testid="judge-hint"' not in hidden and "AI judge" not in hidden

    configure(judge.url, routing_allowed=False, show_to_annotators=True)
    page = client.get("/").content.decode()
    assert "This campaign shows an AI judge" in page and "0.95 sure" in page
    verdict_id = re.search(r'name="judge_verdict" value="(\d+)"', page).group(1)
    vote_on_page(client, page, judge_verdict=verdict_id)
    assert JudgeHint.objects.filter(verdict_id=verdict_id, judgement__annotator=annotator).count() == 1
    # A verdict id the page could not have shown is ignored.
    client.force_login(other_annotator)
    vote_on_page(client, client.get("/").content.decode(), judge_verdict="999999")
    assert JudgeHint.objects.count() == 1
    client.force_login(staff)
    quality = client.get("/quality/").content.decode()
    assert 'data-testid="hint-effect"' in quality and "of 1 votes made with its opinion on screen" in quality


def vote_on_page(client, page: str, **extra: str) -> None:
    """Vote "left" on the pair `page` shows, as its form posts it, with `extra` fields."""
    import re

    pair_id = re.search(r"/pairs/(\d+)/judge/", page).group(1)
    key = re.search(r'name="idempotency_key" value="([0-9a-f-]+)"', page).group(1)
    vote = {"choice": "left", "strength": "2", "idempotency_key": key, **extra}
    answer = client.post(f"/pairs/{pair_id}/judge/", vote)
    assert answer.status_code in (200, 302)
