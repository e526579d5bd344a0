"""The annotator API's two hot answers are written out by hand (annotate/annotation/api.py, `next_pair_data` and
`judgement_data`); their serializers stay what the OpenAPI schema describes. Both must say the same thing for every
kind of pair and vote: two answers, a ranking, the AI judge's hint on screen, a written answer with the vote."""

from __future__ import annotations

import json
import uuid

import pytest
from rest_framework.test import APIClient
from rest_framework.utils.encoders import JSONEncoder

from annotate.annotation import api, services
from annotate.models import Assignment, Campaign, Judgement
from tests.annotate.test_judge_hint_api import judged  # noqa: F401 (fixture)
from tests.annotate.test_judging import BAD, GOOD, configure

pytestmark = pytest.mark.django_db(transaction=True)


def _json(data: object) -> object:
    return json.loads(json.dumps(data, cls=JSONEncoder))


def _client(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client


def _same_as_the_serializers(client: APIClient, body: dict | None = None) -> tuple[dict, dict]:
    """Lease a pair and vote on it through the API; each answer equals its serializer's output on the same row."""
    offered = client.get("/api/pairs/next/")
    assert offered.status_code == 200, offered.content
    assignment = Assignment.objects.get(pair_id=offered.json()["pair"], status=Assignment.Status.LEASED)
    expected = _json(api.NextPairOutput(assignment, context={}).data)
    assert offered.json() == expected == _json(api.next_pair_data(assignment))
    if body is None:
        body = {"choice": "left", "strength": 2}
    vote = {"pair": offered.json()["pair"], "idempotency_key": str(uuid.uuid4()), **body}
    voted = client.post("/api/judgements/", vote, format="json")
    assert voted.status_code == 201, voted.content
    stored = Judgement.objects.get(pk=voted.json()["id"])
    assert voted.json() == _json(api.JudgementOutput(stored).data) == _json(api.judgement_data(stored))
    again = client.post("/api/judgements/", vote, format="json")  # the replay answers with the stored vote
    assert again.status_code == 200 and again.json() == voted.json()
    return offered.json(), voted.json()


def test_two_answers_and_a_vote(make_pair, annotator):
    make_pair(messages=[{"role": "user", "content": 'Ünïcode <b>and</b> "quotes"?'}])
    offered, voted = _same_as_the_serializers(_client(annotator), {"choice": "right", "strength": 3})
    assert offered["answers"] == [] and offered["judge_hint"] is None
    assert voted["choice"] == "right" and voted["strength"] == 3 and voted["edit"] is None


def test_a_ranking_and_all_bad(make_ranking_pair, annotator):
    make_ranking_pair()
    make_ranking_pair(count=3)
    client = _client(annotator)
    offered, voted = _same_as_the_serializers(client, {"choice": "rank", "ranks": [2, 1, 1, 3]})
    assert len(offered["answers"]) == 4 and sorted(voted["ranking"]) == [1, 1, 2, 3]
    offered, voted = _same_as_the_serializers(client, {"choice": "all_bad"})
    assert len(offered["answers"]) == 3 and voted["choice_relative_to_pair"] == "both_bad"


def test_the_judges_hint_on_screen(judged, annotator):  # noqa: F811 (fixture)
    configure(judged.url, routing_allowed=False, show_to_annotators=True)
    offered, _ = _same_as_the_serializers(_client(annotator))
    good_side = "left" if offered["left"]["text"] == GOOD else "right"
    assert offered["right" if good_side == "left" else "left"]["text"] == BAD
    assert offered["judge_hint"]["choice"] == good_side and offered["judge_hint"]["confidence"] == 0.95


def test_a_written_answer_with_the_vote(make_pair, annotator):
    make_pair()
    Campaign.objects.filter(name="default").update(edits_allowed=True)
    _, voted = _same_as_the_serializers(_client(annotator), {"choice": "left", "strength": 1, "edit": "Better."})
    assert voted["edit"]["text"] == "Better." and voted["edit"]["status"] == "accepted"


def test_an_undo_gives_the_pair_back_in_the_same_shape(make_pair, annotator):
    make_pair()
    client = _client(annotator)
    _, voted = _same_as_the_serializers(client)
    undone = client.post("/api/judgements/undo/", {"judgement": voted["id"]}, format="json")
    assert undone.status_code == 200, undone.content
    assignment = services.assignment_current(annotator=annotator)
    assert assignment is not None and undone.json() == _json(api.next_pair_data(assignment))
