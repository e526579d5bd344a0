"""The AI judge's hint through the annotator API, as on the annotate page: in GET /api/pairs/next/ only when the
campaign shows it (never on gold pairs), on the sides as the annotator sees them, and the vote sent with it recorded
as a JudgeHint once, also when the vote is resent."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from annotate.annotation import services as annotation
from annotate.judging import services as judging
from annotate.models import JudgeHint, Judgement, Pair
from tests.annotate.judge_stand_in import stand_in_judge
from tests.annotate.test_judging import BAD, CAMPAIGN, GOOD, configure

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def judged(make_pair):
    """Two pairs (the good answer on A) and one gold pair, all with the stand-in judge's verdict; the judge, hidden."""
    for _ in range(2):
        make_pair(texts=(GOOD, BAD), prompt_set=CAMPAIGN)
    gold = make_pair(texts=(GOOD, BAD), prompt_set=CAMPAIGN)
    annotation.pair_mark_gold(pair=gold, expected="a")
    with stand_in_judge() as stand_in:
        judge = configure(stand_in.url, routing_allowed=False)
        assert judging.judge_run(judge_id=judge.pk, limit=10) == 3
    return judge


def api_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def vote(client: APIClient, offered: dict, **extra) -> tuple[int, dict]:
    body = {"pair": offered["pair"], "choice": "left", "strength": 2, "idempotency_key": str(uuid.uuid4()), **extra}
    response = client.post("/api/judgements/", body, format="json")
    return response.status_code, body


def test_the_hint_is_absent_unless_the_campaign_shows_it_and_a_sent_verdict_is_then_ignored(judged, annotator):
    client = api_for(annotator)
    offered = client.get("/api/pairs/next/").json()
    assert offered["judge_hint"] is None
    verdict = judged.verdicts.get(pair_id=offered["pair"])
    status, _ = vote(client, offered, judge_verdict=verdict.pk)
    assert status == 201
    assert not JudgeHint.objects.exists()  # it was not on screen: the vote is not marked as made with it


def test_the_hint_comes_with_the_pair_on_the_shown_sides_and_the_vote_records_it_once(judged, annotator, staff):
    configure(judged.url, routing_allowed=False, show_to_annotators=True)
    # Gold pairs served first (the gold rate at 1): the gold pair, then the two others.
    patched = api_for(staff).patch(f"/api/campaigns/{judged.campaign_id}/", {"gold_rate": 1.0}, format="json")
    assert patched.status_code == 200, patched.content
    client = api_for(annotator)
    seen, gold = 0, 0
    while (response := client.get("/api/pairs/next/")).status_code == 200:
        offered = response.json()
        hint = offered["judge_hint"]
        good_side = "left" if offered["left"]["text"] == GOOD else "right"
        pair = Pair.objects.get(pk=offered["pair"])
        if pair.gold_choice:
            gold += 1
            assert hint is None  # gold pairs measure people: never shown
        else:
            seen += 1
            verdict = judged.verdicts.get(pair=pair)
            assert hint == {"verdict": verdict.pk, "choice": good_side, "confidence": 0.95}
        status, body = vote(client, offered, judge_verdict=hint["verdict"] if hint else None)
        assert status == 201
        # Resent (a retry after a lost answer): the same vote, one hint.
        again = client.post("/api/judgements/", body, format="json")
        assert again.status_code == 200
    assert (seen, gold) == (2, 1)
    assert JudgeHint.objects.filter(judgement__annotator=annotator).count() == 2
    assert Judgement.objects.filter(annotator=annotator).count() == 3


def test_a_verdict_not_shown_for_the_pair_is_ignored_and_a_bad_one_is_a_400(judged, annotator):
    configure(judged.url, routing_allowed=False, show_to_annotators=True)
    client = api_for(annotator)
    offered = client.get("/api/pairs/next/").json()
    other = judged.verdicts.exclude(pair_id=offered["pair"]).first()
    for bad in ("soon", -1, 2**63):
        status, _ = vote(client, offered, judge_verdict=bad)
        assert status == 400
    assert not Judgement.objects.filter(annotator=annotator).exists()
    status, _ = vote(client, offered, judge_verdict=other.pk)
    assert status == 201
    assert not JudgeHint.objects.exists()
