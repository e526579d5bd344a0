"""When routing stops by itself, the pairs the judge settled alone stay settled (why: judging.selectors.judge_trust)
and the quality page, the judge page and the API say how many no person has voted on."""

from __future__ import annotations

import pytest

from annotate.annotation import services as annotation
from annotate.judging import services as judging
from annotate.judging.selectors import judge_trust
from annotate.models import Judgement, Pair

from .test_judging import configure, pairs, people_vote_on_all, stand_in  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def test_settled_pairs_stay_settled_when_routing_stops_and_the_pages_count_them(
    stand_in,  # noqa: F811
    pairs,  # noqa: F811
    annotator,
    other_annotator,
    client,
    staff,
):
    pairs(4, gold=True)
    pairs(4)
    people_vote_on_all(annotator, 4)
    judge = configure(stand_in.url)
    judging.judge_run(judge_id=judge.pk, limit=50)
    settled = pairs(3)
    judging.judge_run(judge_id=judge.pk, limit=50)
    assert judge_trust(judge=judge).settled == 3
    assert judge_trust(judge=judge).settled_unchecked == 3
    client.force_login(staff)
    page = client.get("/quality/").content.decode()
    assert "3 pairs settled by the judge alone</strong> have no person's vote." in page
    assert "training rounds: left out" in page

    # Every pair it could settle now goes to people as a check, and they disagree with it on all of them.
    judge = configure(stand_in.url, check_share=1.0)
    pairs(6)
    judging.judge_run(judge_id=judge.pk, limit=50)
    people_vote_on_all(annotator, 6, contrary=True)
    judging.judge_run(judge_id=judge.pk, limit=50)
    judge.refresh_from_db()
    assert judge.routing_active is False and judge.routing_stopped_reason

    # The settled pairs are kept as they were: one judge vote each, full, never dealt to people.
    for pair in Pair.objects.filter(pk__in=[pair.pk for pair in settled]):
        assert pair.is_complete and pair.judgement_count == pair.judgements_required
        assert list(pair.judgements.values_list("source", flat=True)) == [Judgement.Source.JUDGE]
    offered = annotation.assignment_lease_next(annotator=other_annotator)
    assert offered is None or offered.pair_id not in {pair.pk for pair in settled}
    assert judge_trust(judge=judge).settled_unchecked == 3

    page = client.get("/quality/").content.decode()
    assert 'data-testid="routing-stopped"' in page
    assert "3 pairs settled by the judge alone</strong> have no person's vote: routing stopped" in page
    assert "they stay settled, not reopened to people" in page
    judge_page = client.get(f"/campaigns/{judge.campaign_id}/judge/").content.decode()
    assert 'data-testid="settled-unchecked"' in judge_page
    client.force_login(staff)
    api = client.get(f"/api/campaigns/{judge.campaign_id}/judge/").json()
    assert {trust["settled_unchecked"] for trust in api["trust"]} == {3}, api
