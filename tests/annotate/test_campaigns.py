"""Campaign pages and API, the pair page's gold answer, and decisions about annotators: each for staff only, each
changing nothing on bad input."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from annotate.annotation import services
from annotate.models import AnnotatorAction, Campaign, Pair

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_api(staff):
    api = APIClient()
    api.force_authenticate(staff)
    return api


def test_campaign_pages_are_for_staff(client, annotator, make_pair):
    pair = make_pair()
    assert client.get("/campaigns/").status_code == 302
    client.force_login(annotator)
    for url in ("/campaigns/", f"/campaigns/{pair.campaign_id}/", f"/pairs/{pair.pk}/"):
        assert client.get(url).status_code == 403
    assert client.post(f"/pairs/{pair.pk}/gold/", {"expected": "a"}).status_code == 403
    pair.refresh_from_db()
    assert not pair.is_gold


def test_staff_create_a_campaign_whose_guidelines_annotators_see(client, staff, annotator, make_pair):
    client.force_login(staff)
    guidelines = "Prefer **safe** answers."
    created = client.post("/campaigns/", {"name": "medical", "title": "Medical answers", "votes_per_pair": 3,
                                          "gold_rate": 0, "repeat_rate": 0, "is_active": "on",
                                          "guidelines": guidelines})  # fmt: skip
    assert created.status_code == 303
    campaign = Campaign.objects.get(name="medical")
    assert campaign.votes_per_pair == 3
    pair = make_pair(messages=[{"role": "user", "content": "Is aspirin safe?"}])
    Pair.objects.filter(pk=pair.pk).update(campaign=campaign, judgements_required=3)

    client.force_login(annotator)
    page = client.get("/").content.decode()
    assert "Guidelines: Medical answers" in page and "<strong>safe</strong>" in page


def test_bad_campaign_values_are_refused_and_change_nothing(client, staff):
    client.force_login(staff)
    response = client.post("/campaigns/", {"name": "x", "votes_per_pair": 0, "gold_rate": 0.7, "repeat_rate": 0.6})
    assert response.status_code == 400
    assert "at least 1" in response.content.decode() or "greater than or equal to 1" in response.content.decode()
    assert not Campaign.objects.filter(name="x").exists()


def test_campaigns_through_the_api(staff_api, annotator):
    created = staff_api.post("/api/campaigns/", {"name": "code", "votes_per_pair": 2, "gold_rate": 0.1},
                             format="json")  # fmt: skip
    assert created.status_code == 201 and created.json()["votes_per_pair"] == 2
    campaign_id = created.json()["id"]
    changed = staff_api.patch(f"/api/campaigns/{campaign_id}/", {"is_active": False}, format="json")
    assert changed.status_code == 200 and changed.json()["is_active"] is False
    refused = staff_api.patch(f"/api/campaigns/{campaign_id}/", {"repeat_rate": 0.95}, format="json")
    assert refused.status_code == 400 and "repeat_rate" in refused.json()["errors"]
    assert Campaign.objects.get(pk=campaign_id).repeat_rate == 0.0
    assert staff_api.get("/api/campaigns/").json()["count"] == 1
    annotator_api = APIClient()
    annotator_api.force_authenticate(annotator)
    assert annotator_api.get("/api/campaigns/").status_code == 403


def test_gold_marking_from_the_pair_page_and_the_api(client, staff, staff_api, make_pair):
    pair = make_pair()
    client.force_login(staff)
    client.post(f"/pairs/{pair.pk}/gold/", {"expected": "b"})
    pair.refresh_from_db()
    assert pair.gold_choice == "b"
    assert "gold: b" in client.get(f"/pairs/{pair.pk}/").content.decode()
    assert staff_api.post(f"/api/pairs/{pair.pk}/gold/", {"expected": "z"}, format="json").status_code == 400
    pair.refresh_from_db()
    assert pair.gold_choice == "b"
    assert staff_api.post(f"/api/pairs/{pair.pk}/gold/", {"expected": ""}, format="json").status_code == 200
    pair.refresh_from_db()
    assert not pair.is_gold


def test_pausing_an_annotator_through_the_api_is_recorded_and_reversible(staff_api, annotator, make_pair):
    make_pair()
    url = f"/api/annotators/{annotator.username}/actions/"
    assert staff_api.post(url, {"action": "pause"}, format="json").status_code == 400  # a reason is required
    assert staff_api.post(url, {"action": "pause", "reason": "random clicks"}, format="json").json()["paused"]
    assert services.assignment_lease_next(annotator=annotator) is None
    assert staff_api.post(url, {"action": "resume", "reason": "retrained"}, format="json").json()["paused"] is False
    assert services.assignment_lease_next(annotator=annotator) is not None
    assert list(AnnotatorAction.objects.values_list("action", "reason")) == [
        ("resume", "retrained"),
        ("pause", "random clicks"),
    ]
    assert staff_api.post("/api/annotators/nobody/actions/", {"action": "pause", "reason": "x"},
                          format="json").status_code == 404  # fmt: skip
