"""Undoing the last vote, a campaign's quota and progress, and what the page says while no pair is ready: through the
services and the annotate page's views, as an annotator reaches each state."""

import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from annotate.annotation import services
from annotate.errors import Conflict
from annotate.models import Assignment, Campaign, Judgement, Pair, UndoneJudgement
from annotate.rounds import services as rounds
from annotate.sampling import services as sampling
from tests.annotate.conftest import run_in_threads
from tests.annotate.voting import vote_as_annotator

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def vote(annotator, *, choice="left", strength=2, rationale="", key=None):
    """Take the annotator's current (or next) pair and vote on it as the page does; returns the vote and its key."""
    assignment = services.assignment_lease_next(annotator=annotator)
    assert assignment is not None
    key = key or uuid.uuid4()
    recorded = services.judgement_record(
        annotator=annotator,
        pair_id=assignment.pair_id,
        choice=choice,
        strength=strength if choice in ("left", "right") else None,
        rationale=rationale,
        idempotency_key=key,
    )
    return recorded.judgement, key


def counts(pair):
    pair.refresh_from_db()
    return pair.judgement_count, pair.lease_count


def test_undo_gives_the_pair_back_with_its_place_and_a_new_vote_counts_once(make_pair, annotator):
    pair = make_pair(required=1)
    judgement, _ = vote(annotator, rationale="first thought")
    assert counts(pair) == (1, 0)

    assignment = services.judgement_undo(annotator=annotator, judgement_id=judgement.pk)

    assert assignment.pair_id == pair.pk and assignment.status == Assignment.Status.LEASED
    assert counts(pair) == (0, 1)  # the place went back to their lease, not to the open queue
    assert not Judgement.objects.exists()
    assert services.assignment_current(annotator=annotator).pk == assignment.pk
    assert UndoneJudgement.objects.get().rationale == "first thought"
    again, _ = vote(annotator, choice="right", strength=1)
    assert again.pair_id == pair.pk and counts(pair) == (1, 0)
    assert Judgement.objects.count() == 1


def test_a_late_resend_of_the_undone_vote_is_refused_and_counts_nothing(make_pair, annotator):
    pair = make_pair(required=1)
    judgement, key = vote(annotator)
    services.judgement_undo(annotator=annotator, judgement_id=judgement.pk)

    with pytest.raises(Conflict, match="undone"):
        services.judgement_record(
            annotator=annotator, pair_id=pair.pk, choice="left", strength=2, rationale="", idempotency_key=key
        )
    assert counts(pair) == (0, 1) and not Judgement.objects.exists()


def test_a_second_undo_and_an_older_vote_are_refused(make_pair, annotator):
    make_pair(), make_pair()
    first, _ = vote(annotator)
    second, _ = vote(annotator)

    with pytest.raises(Conflict, match="last vote"):
        services.judgement_undo(annotator=annotator, judgement_id=first.pk)
    services.judgement_undo(annotator=annotator, judgement_id=second.pk)
    with pytest.raises(Conflict, match="last vote"):
        services.judgement_undo(annotator=annotator, judgement_id=second.pk)
    assert list(Judgement.objects.values_list("pk", flat=True)) == [first.pk]  # the older vote stays


def test_nobody_undoes_someone_elses_vote(client, make_pair, annotator, other_annotator):
    pair = make_pair(required=2)
    judgement, _ = vote(other_annotator)
    client.force_login(annotator)

    response = client.post(reverse("undo"), {"judgement": judgement.pk}, **HTMX)

    assert response.status_code == 409
    assert "only your last vote" in response.content.decode()
    assert Judgement.objects.get() == judgement and counts(pair)[0] == 1


def test_undo_is_refused_once_the_lease_has_run_out(make_pair, annotator):
    make_pair()
    judgement, _ = vote(annotator)
    Assignment.objects.filter(pk=judgement.assignment_id).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert services.judgement_undoable(annotator=annotator) is None
    with pytest.raises(Conflict, match="lease"):
        services.judgement_undo(annotator=annotator, judgement_id=judgement.pk)
    assert Judgement.objects.get() == judgement


def test_undo_is_refused_once_a_training_round_has_read_the_vote(settings, tmp_path, make_pair, annotator, staff):
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ROUND_MIN_TRAIN_PAIRS = 1
    make_pair()
    judgement, _ = vote(annotator)
    rounds.round_start(trigger="api", started_by=staff)

    with pytest.raises(Conflict, match="training round"):
        services.judgement_undo(annotator=annotator, judgement_id=judgement.pk)
    assert Judgement.objects.get() == judgement


def test_undoing_a_gold_vote_takes_back_its_count(make_pair, annotator):
    campaign = Campaign.for_prompt_set("default")
    Campaign.objects.filter(pk=campaign.pk).update(gold_rate=1.0)
    gold = services.pair_mark_gold(pair=make_pair(), expected="a")
    make_pair()
    judgement, _ = vote(annotator)
    assert judgement.pair_id == gold.pk and counts(gold)[0] == 1

    services.judgement_undo(annotator=annotator, judgement_id=judgement.pk)

    assert counts(gold) == (0, 0)


def test_undo_without_javascript_redirects_to_the_pair_with_the_rationale_filled_in(client, make_pair, annotator):
    pair = make_pair()
    make_pair()
    client.force_login(annotator)
    client.get(reverse("annotate"))
    client.post(
        reverse("judge", args=[pair.pk]),
        {"choice": "tie", "rationale": "both say the same", "idempotency_key": str(uuid.uuid4())},
    )
    judgement = Judgement.objects.get()
    assert 'data-testid="undo"' in client.get(reverse("annotate")).content.decode()  # on the next pair

    response = client.post(reverse("undo"), {"judgement": judgement.pk})

    assert response.status_code == 302 and response["Location"] == reverse("annotate")
    body = client.get(reverse("annotate")).content.decode()
    assert f'action="{reverse("judge", args=[pair.pk])}"' in body
    assert ">both say the same</textarea>" in body
    assert not Judgement.objects.exists()


def test_undo_through_htmx_shows_the_pair_again(client, make_pair, annotator):
    pair = make_pair()
    client.force_login(annotator)
    client.get(reverse("annotate"))
    client.post(
        reverse("judge", args=[pair.pk]),
        {"choice": "left", "strength": "3", "idempotency_key": str(uuid.uuid4())},
        **HTMX,
    )

    response = client.post(reverse("undo"), {"judgement": Judgement.objects.get().pk}, **HTMX)

    body = response.content.decode()
    assert response.status_code == 200 and body.lstrip().startswith('<section id="pair"')
    assert "Vote undone" in body and reverse("judge", args=[pair.pk]) in body
    assert 'value="3" data-key="e" checked' in body  # the strength they gave is chosen again


def test_the_quota_is_a_goal_and_leasing_stops_there(client, make_pair, annotator):
    for _ in range(3):
        make_pair()
    Campaign.objects.filter(name="default").update(quota_per_annotator=2)
    client.force_login(annotator)

    body = client.get(reverse("annotate")).content.decode()
    assert "<strong>0</strong> of 2 (your quota)" in body and "<strong>2</strong> left for you" in body
    vote(annotator)
    vote(annotator)

    assert services.assignment_lease_next(annotator=annotator) is None
    body = client.get(reverse("annotate")).content.decode()
    assert "You have given every vote asked of you" in body
    assert "<tr><td>default</td><td>2</td><td>0</td><td>2</td></tr>" in body  # their work per campaign
    assert Pair.objects.open().count() == 1  # one pair is still open to others


def test_progress_without_a_quota_counts_every_pair_open_to_them(make_pair, annotator):
    for _ in range(3):
        make_pair()
    vote(annotator)
    services.assignment_lease_next(annotator=annotator)  # the next pair, on their screen

    (campaign,) = services.annotator_progress(annotator=annotator).campaigns

    assert (campaign.done, campaign.left, campaign.goal, campaign.quota) == (1, 2, 3, None)


def test_a_wait_says_what_the_model_is_writing_and_about_how_long(
    client, make_pair, annotator, other_annotator, serving_version, settings
):
    settings.PAIR_BUFFER_TARGET = settings.PAIR_REFILL_BATCH = 8
    pair = make_pair()  # answers written in 100 ms each: the model's recent writing time
    vote_as_annotator(other_annotator, pair=pair)  # its one vote given: nothing is open
    # A sampling worker has claimed the next batch and is writing it (the claim its refill takes).
    claim, _ = sampling.sampling_claim_take(version=serving_version, holder="host:1:token")
    assert claim is not None and claim.pairs == 8
    client.force_login(annotator)

    body = client.get(reverse("annotate")).content.decode()

    assert "Pairs are being prepared." in body and "The model is writing 8 new pairs of answers." in body
    assert "ready in about 1 second" in body


def test_a_wait_says_when_no_campaign_is_open_to_them(client, make_pair, annotator):
    make_pair()
    Campaign.objects.update(is_active=False)
    client.force_login(annotator)

    body = client.get(reverse("annotate")).content.decode()

    assert "No pair for you right now." in body and "No campaign is open to you" in body


def test_guidelines_open_on_first_sight_and_again_after_a_change(client, make_pair, annotator):
    make_pair()
    Campaign.objects.filter(name="default").update(guidelines="Prefer the **shorter** answer.")
    client.force_login(annotator)

    def opened() -> bool:
        body = client.get(reverse("annotate")).content.decode()
        assert "<strong>shorter</strong>" in body or "<strong>longer</strong>" in body
        return (
            'data-testid="guidelines" data-campaign' in body
            and '"{}" open>'.format(Campaign.objects.get(name="default").pk) in body
        )

    assert opened() is True
    assert opened() is False
    Campaign.objects.filter(name="default").update(guidelines="Prefer the **longer** answer.")
    assert opened() is True
    assert opened() is False


@pytest.mark.django_db(transaction=True)
def test_two_undos_sent_at_once_take_the_vote_back_once(make_pair, annotator):
    pair = make_pair(required=1)
    judgement, _ = vote(annotator)
    outcomes: list[str] = []

    def undo() -> None:
        try:
            services.judgement_undo(annotator=annotator, judgement_id=judgement.pk)
            outcomes.append("undone")
        except Conflict:
            outcomes.append("refused")

    run_in_threads([undo, undo])

    assert sorted(outcomes) == ["refused", "undone"]
    assert counts(pair) == (0, 1) and UndoneJudgement.objects.count() == 1


def test_a_later_repeat_of_the_pair_does_not_show_the_undone_answer(client, make_pair, annotator, settings):
    settings.REPEAT_MIN_VOTES_BETWEEN = 0
    pair = make_pair()
    judgement, _ = vote(annotator, rationale="my first reason")
    services.judgement_undo(annotator=annotator, judgement_id=judgement.pk)
    vote(annotator, rationale="my second reason")
    Campaign.objects.filter(name="default").update(repeat_rate=1.0)
    make_pair()
    client.force_login(annotator)

    body = client.get(reverse("annotate")).content.decode()

    assert Assignment.objects.get(annotator=annotator, kind=Assignment.Kind.REPEAT).pair_id == pair.pk
    assert reverse("judge", args=[pair.pk]) in body
    assert "my first reason" not in body and "></textarea>" in body


def test_staff_set_a_quota_in_the_campaign_form_and_the_api(client, staff):
    staff_api = APIClient()
    staff_api.force_authenticate(staff)
    client.force_login(staff)
    form = {"name": "code", "votes_per_pair": 1, "gold_rate": 0, "repeat_rate": 0, "is_active": "on"}
    refused = client.post("/campaigns/", {**form, "quota_per_annotator": 0})
    assert refused.status_code == 400 and not Campaign.objects.exists()
    assert client.post("/campaigns/", {**form, "quota_per_annotator": 40}).status_code == 303
    campaign = Campaign.objects.get(name="code")
    assert campaign.quota_per_annotator == 40

    changed = staff_api.patch(f"/api/campaigns/{campaign.pk}/", {"quota_per_annotator": None}, format="json")
    assert changed.status_code == 200 and changed.json()["quota_per_annotator"] is None
    refused = staff_api.patch(f"/api/campaigns/{campaign.pk}/", {"quota_per_annotator": 0}, format="json")
    assert refused.status_code == 400 and "quota_per_annotator" in refused.json()["errors"]
    campaign.refresh_from_db()
    assert campaign.quota_per_annotator is None


def test_a_paused_annotator_cannot_undo(make_pair, annotator, staff):
    pair = make_pair()
    judgement, _ = vote(annotator)
    services.annotator_act(annotator=annotator, action="pause", by=staff, reason="checking their votes")

    assert services.judgement_undoable(annotator=annotator) is None
    with pytest.raises(Conflict, match="paused"):
        services.judgement_undo(annotator=annotator, judgement_id=judgement.pk)
    assert Judgement.objects.get() == judgement and counts(pair) == (1, 0)


@pytest.mark.parametrize(
    ("sent", "status", "says"),
    [
        ({}, 400, "say which vote to undo"),
        ({"judgement": "x"}, 400, "say which vote to undo"),
        ({"judgement": "0"}, 400, "say which vote to undo"),
        ({"judgement": "9" * 40}, 409, "only your last vote"),
    ],
)
def test_an_undo_that_names_no_vote_of_theirs_is_refused_and_changes_nothing(
    client, make_pair, annotator, sent, status, says
):
    pair = make_pair()
    judgement, _ = vote(annotator)
    client.force_login(annotator)

    response = client.post(reverse("undo"), sent, **HTMX)

    assert response.status_code == status and says in response.content.decode()
    assert Judgement.objects.get() == judgement and counts(pair) == (1, 0)


# --- The same undo through the annotator API --------------------------------------------------------------------


def api_of(user):
    api = APIClient()
    api.force_authenticate(user)
    return api


def api_vote(api):
    """Lease the next pair and vote on it through the API, as an outside client does; returns the pair and the vote."""
    shown = api.get("/api/pairs/next/").json()
    body = {"pair": shown["pair"], "choice": "left", "strength": 2, "idempotency_key": str(uuid.uuid4())}
    recorded = api.post("/api/judgements/", body, format="json")
    assert recorded.status_code == 201
    return shown, recorded.json()


def test_undo_through_the_api_gives_the_pair_back_as_next_would(make_pair, annotator):
    pair = make_pair(required=1)
    api = api_of(annotator)
    shown, recorded = api_vote(api)

    undone = api.post("/api/judgements/undo/", {"judgement": recorded["id"]}, format="json")

    assert undone.status_code == 200
    body = undone.json()
    assert {key: body[key] for key in ("pair", "prompt", "left", "right")} == {
        key: shown[key] for key in ("pair", "prompt", "left", "right")
    }
    assert not Judgement.objects.exists() and counts(pair) == (0, 1)
    assert api.get("/api/pairs/next/").json()["pair"] == pair.pk  # the reopened lease is the one next serves

    second = api.post("/api/judgements/undo/", {"judgement": recorded["id"]}, format="json")
    assert second.status_code == 409 and "only your last vote" in second.json()["detail"]
    assert counts(pair) == (0, 1)


def test_the_api_refuses_to_undo_someone_elses_vote(make_pair, annotator, other_annotator):
    pair = make_pair(required=2)
    _, recorded = api_vote(api_of(other_annotator))

    response = api_of(annotator).post("/api/judgements/undo/", {"judgement": recorded["id"]}, format="json")

    assert response.status_code == 409 and response.json()["code"] == "conflict"
    assert Judgement.objects.get().pk == recorded["id"] and counts(pair)[0] == 1


@pytest.mark.parametrize("sent", [{}, {"judgement": "x"}, {"judgement": 0}, {"judgement": "9" * 40}])
def test_an_api_undo_that_names_no_vote_is_a_400_and_changes_nothing(make_pair, annotator, sent):
    pair = make_pair()
    api = api_of(annotator)
    _, recorded = api_vote(api)

    response = api.post("/api/judgements/undo/", sent, format="json")

    assert response.status_code == 400 and set(response.json()["errors"]) == {"judgement"}
    assert Judgement.objects.get().pk == recorded["id"] and counts(pair) == (1, 0)


def test_the_api_undo_is_for_logged_in_annotators(make_pair, annotator):
    pair = make_pair()
    _, recorded = api_vote(api_of(annotator))
    assert APIClient().post("/api/judgements/undo/", {"judgement": recorded["id"]}, format="json").status_code == 401
    assert counts(pair) == (1, 0)
