"""The annotation queue under concurrency, with real database connections (one per thread, as gunicorn's threads
have): overlap k, campaigns, gold pairs, repeats, paused annotators, and idempotent votes sent at once.

Run on SQLite and PostgreSQL (CI runs the suite on PostgreSQL, where row locks and skip-locked reads are real)."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from annotate.annotation import services
from annotate.errors import Conflict
from annotate.models import Assignment, Campaign, Judgement, Pair

from .conftest import run_in_threads


def vote(user: User, pair_id: int, choice: str = "left", key: uuid.UUID | None = None) -> services.RecordedJudgement:
    return services.judgement_record(
        annotator=user,
        pair_id=pair_id,
        choice=choice,
        strength=2 if choice in ("left", "right") else None,
        rationale="",
        idempotency_key=key or uuid.uuid4(),
    )


@pytest.mark.django_db(transaction=True)
def test_overlap_k_under_concurrency_never_over_votes_nor_repeats_and_fills_every_pair(make_pair, django_user_model):
    campaign = Campaign.for_prompt_set("default")
    Campaign.objects.filter(pk=campaign.pk).update(votes_per_pair=3)
    pairs = [make_pair() for _ in range(12)]
    assert {pair.judgements_required for pair in pairs} == {3}  # new pairs take k from their campaign
    annotators = [django_user_model.objects.create_user(f"worker{n}") for n in range(8)]
    refusals: list[str] = []

    def work(annotator: User) -> None:
        while True:
            assignment = services.assignment_lease_next(annotator=annotator)
            if assignment is None:
                return
            try:
                vote(annotator, assignment.pair_id, choice=["left", "right", "tie"][assignment.pk % 3])
            except Conflict as error:
                refusals.append(str(error))

    run_in_threads([lambda a=a: work(a) for a in annotators])

    assert refusals == []
    counts = Counter(Judgement.objects.values_list("pair_id", flat=True))
    assert counts == {pair.pk: 3 for pair in pairs}  # every pair filled, none over-voted
    assert Judgement.objects.values("pair", "annotator").distinct().count() == Judgement.objects.count()
    assert set(Pair.objects.values_list("judgement_count", "lease_count")) == {(3, 0)}


@pytest.mark.django_db(transaction=True)
def test_the_same_idempotency_key_sent_at_once_stores_one_vote_and_answers_it_to_every_request(make_pair, annotator):
    pair = make_pair()
    services.assignment_lease_next(annotator=annotator)
    key = str(uuid.uuid4())
    answers: list[tuple[int, Any]] = []

    def send() -> None:
        api = APIClient()
        api.force_authenticate(annotator)
        body = {"pair": pair.pk, "choice": "left", "strength": 2, "idempotency_key": key}
        response = api.post("/api/judgements/", body, format="json")
        answers.append((response.status_code, response.json()))

    run_in_threads([send] * 8)

    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 7 + [201]
    assert len({body["id"] for _, body in answers}) == 1
    assert Judgement.objects.count() == 1
    pair.refresh_from_db()
    assert (pair.judgement_count, pair.lease_count) == (1, 0)


def test_campaigns_serve_only_the_annotators_of_their_groups(make_pair, annotator, other_annotator):
    team = Group.objects.create(name="medical")
    restricted = Campaign.objects.create(name="medical-set", votes_per_pair=1)
    restricted.groups.add(team)
    pair = make_pair(messages=None)
    Pair.objects.filter(pk=pair.pk).update(campaign=restricted)

    assert services.assignment_lease_next(annotator=annotator) is None
    annotator.groups.add(team)
    assert services.assignment_lease_next(annotator=annotator).pair == pair
    Campaign.objects.filter(pk=restricted.pk).update(is_active=False)
    assert services.assignment_lease_next(annotator=other_annotator) is None


def test_fewest_votes_first(make_pair, annotator, other_annotator, staff):
    Campaign.objects.filter(pk=Campaign.for_prompt_set("default").pk).update(votes_per_pair=2)
    older, newer = make_pair(), make_pair()
    vote(annotator, services.assignment_lease_next(annotator=annotator).pair_id)  # older now has a vote
    assert services.assignment_lease_next(annotator=other_annotator).pair == newer
    assert older.pk < newer.pk


def test_gold_pairs_are_served_at_the_campaign_rate_and_never_count(make_pair, annotator, settings):
    campaign = Campaign.for_prompt_set("default")
    Campaign.objects.filter(pk=campaign.pk).update(gold_rate=1.0)
    gold = services.pair_mark_gold(pair=make_pair(), expected="a")
    ordinary = make_pair()

    assignment = services.assignment_lease_next(annotator=annotator)

    assert assignment.pair == gold and assignment.kind == Assignment.Kind.GOLD
    vote(annotator, gold.pk)
    ordinary.refresh_from_db()
    assert (ordinary.judgement_count, ordinary.lease_count) == (0, 0)  # its place was handed back
    assert services.assignment_lease_next(annotator=annotator).pair == ordinary  # no gold left for them


def test_a_repeat_comes_later_with_sides_swapped_and_is_never_counted(make_pair, annotator, settings):
    settings.REPEAT_MIN_VOTES_BETWEEN = 1
    campaign = Campaign.for_prompt_set("default")
    pairs = [make_pair() for _ in range(4)]
    first = services.assignment_lease_next(annotator=annotator)
    vote(annotator, first.pair_id, choice="left")
    second = services.assignment_lease_next(annotator=annotator)
    vote(annotator, second.pair_id)
    Campaign.objects.filter(pk=campaign.pk).update(repeat_rate=1.0)

    repeat = services.assignment_lease_next(annotator=annotator)

    assert repeat.kind == Assignment.Kind.REPEAT and repeat.pair_id == first.pair_id  # not the most recent one
    assert repeat.a_on_left is not first.a_on_left
    recorded = vote(annotator, repeat.pair_id, choice="right")  # the same answer, now on the other side
    assert recorded.judgement.is_repeat
    original = Judgement.objects.get(pair_id=first.pair_id, is_repeat=False)
    assert recorded.judgement.choice == original.choice
    pair = Pair.objects.get(pk=first.pair_id)
    assert pair.judgement_count == 1
    assert len(pairs) == 4


def test_a_paused_annotator_gets_no_pairs_and_the_decision_is_recorded(make_pair, annotator, staff):
    pair, _another = make_pair(), make_pair()
    services.assignment_lease_next(annotator=annotator)
    services.annotator_act(annotator=annotator, action="pause", by=staff, reason="random clicking")
    assert services.assignment_lease_next(annotator=annotator) is None
    pair.refresh_from_db()
    assert pair.lease_count == 0  # their lease was handed back
    services.annotator_act(annotator=annotator, action="resume", by=staff, reason="talked to them")
    assert services.assignment_lease_next(annotator=annotator) is not None
    assert [a.action for a in annotator.actions_about.all()] == ["resume", "pause"]


def test_leases_that_ran_out_free_their_place(make_pair, annotator, other_annotator):
    from datetime import timedelta

    from django.utils import timezone

    pair = make_pair()
    first = services.assignment_lease_next(annotator=annotator)
    Assignment.objects.filter(pk=first.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.leases_expire() == 1
    pair.refresh_from_db()
    assert pair.lease_count == 0
    assert services.assignment_lease_next(annotator=other_annotator).pair == pair


def test_lease_and_vote_use_few_queries(make_pair, annotator, django_assert_max_num_queries):
    make_pair()
    with django_assert_max_num_queries(12):
        assignment = services.assignment_lease_next(annotator=annotator)
    with django_assert_max_num_queries(8):
        vote(annotator, assignment.pair_id)
    assert connection.vendor in ("sqlite", "postgresql")


@pytest.mark.django_db(transaction=True)
def test_one_annotator_leasing_from_many_tabs_at_once_holds_each_place_once(make_pair, annotator):
    """Every tab gets a lease or none, never two of one pair; a lease that lost the race for its row (the insert's
    unique constraint) gave its place back with its transaction: each pair's lease count is its live leases."""
    pairs = [make_pair() for _ in range(6)]
    leased: list[int] = []

    def tab() -> None:
        for _ in range(3):
            assignment = services.assignment_lease_next(annotator=annotator)
            if assignment is not None:
                leased.append(assignment.pair_id)
            Assignment.objects.filter(annotator=annotator, status=Assignment.Status.LEASED).update(
                expires_at=timezone.now()  # ran out: the next ask takes another pair
            )

    run_in_threads([tab] * 6)

    assert leased
    assert Assignment.objects.values("pair").distinct().count() == Assignment.objects.count()
    live = Counter(Assignment.objects.filter(status=Assignment.Status.LEASED).values_list("pair_id", flat=True))
    for pair in Pair.objects.filter(pk__in=[p.pk for p in pairs]):
        assert pair.lease_count == live.get(pair.pk, 0), (pair.pk, pair.lease_count, live)
