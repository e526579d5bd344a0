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


def test_the_campaign_pages_show_progress_overall_and_per_annotator(
    client, staff, annotator, other_annotator, make_pair
):
    from tests.annotate.voting import vote_as_annotator

    pairs = [make_pair(required=1), make_pair(required=2), make_pair(required=2)]
    vote_as_annotator(annotator, pair=pairs[0])  # pair 0 has its one vote
    vote_as_annotator(other_annotator, pair=pairs[1])
    vote_as_annotator(annotator, pair=pairs[2])
    assert services.assignment_lease_next(annotator=other_annotator).pair_id == pairs[2].pk  # on their screen
    client.force_login(staff)

    listed = client.get("/campaigns/").content.decode()
    row = listed.split('<tr data-campaign="default">', 1)[1].split("</tr>", 1)[0]
    cells = [cell.strip() for cell in row.split("<td")[4:7]]
    assert '<span data-testid="judged">1 of 3</span>' in row and "(33 %)" in row
    assert cells == [">1</td>", ">1</td>", '>3 <span class="hint small">(1 a pair)</span></td>']  # open, leased, votes
    assert "<td>2</td>" in row  # active annotators: one voted, the other votes and holds a lease

    page = client.get(f"/campaigns/{pairs[0].campaign_id}/").content.decode()
    assert '<strong data-testid="judged">1 of 3 pairs judged</strong>' in page
    annotators = page.split('id="campaign-annotators"', 1)[1].split("</table>", 1)[0]
    ann = annotators.split('data-annotator="ann"', 1)[1].split("</tr>", 1)[0]
    bea = annotators.split('data-annotator="bea"', 1)[1].split("</tr>", 1)[0]
    assert "<td>2</td><td>0</td><td>0</td>" in ann and "<td>1</td><td>0</td><td>1</td>" in bea
    assert 'for="id_guidelines"' in page and 'id="id_votes_per_pair_helptext"' in page  # the form, field by field


def test_a_bad_campaign_value_is_shown_beside_its_field(client, staff):
    client.force_login(staff)
    response = client.post("/campaigns/", {"name": "x", "votes_per_pair": 0, "gold_rate": 2, "repeat_rate": 0})
    page = response.content.decode()
    assert response.status_code == 400 and "<details" in page and "open>" in page.split("<details", 1)[1][:40]
    gold = page.split('for="id_gold_rate"', 1)[1].split("</div>", 1)[0]
    assert '<span class="field-error" role="alert">must be between 0 and 1</span>' in gold
    assert not Campaign.objects.filter(name="x").exists()
