"""The SQL statements of one annotator's cycle, pinned: a lease and a vote through the API as bench/web.py drives it
(token authentication, no transaction around the request, the cache in Redis, where a cache read is no statement),
and the page's; and the cached reads they skip are forgotten as soon as what they come from changes."""

from __future__ import annotations

import re
import uuid

import pytest
from django.contrib.auth.models import Group
from django.core.cache import caches
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from annotate.annotation import services
from annotate.hooks import services as hooks
from annotate.models import Judgement, WebhookDelivery
from annotate.sampling import services as sampling

# Committed for real: the cache's invalidation runs when a change commits, as in production.
pytestmark = pytest.mark.django_db(transaction=True)

PAIR_ID = re.compile(r"/pairs/(\d+)/judge/")
IDEMPOTENCY_KEY = re.compile(r'name="idempotency_key" value="([0-9a-f-]+)"')
TRANSACTION_CONTROL = re.compile(r"(BEGIN|COMMIT|ROLLBACK)\b")


@pytest.fixture(autouse=True)
def redis_like_cache(settings):
    # Production keeps the cache in Redis (a read there is no SQL statement); the locmem cache stands in for it.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    caches["default"].clear()  # locmem keeps its store per process: nothing from another test
    yield
    caches["default"].clear()


@pytest.fixture
def api(annotator):
    return Client(headers={"authorization": f"Token {Token.objects.create(user=annotator).key}"})


def _statements(call):  # type: ignore[no-untyped-def]
    """The request's statements, less a transaction's BEGIN and COMMIT: SQLite's log shows them, PostgreSQL's (where
    the driver sends them) does not, and the pinned counts hold on both."""
    with CaptureQueriesContext(connection) as captured:
        response = call()
    sql = [query["sql"] for query in captured.captured_queries]
    return response, [statement for statement in sql if not TRANSACTION_CONTROL.match(statement)]


def _vote(api, pair_id, key=None):  # type: ignore[no-untyped-def]
    body = {"pair": pair_id, "choice": "left", "strength": 2, "idempotency_key": key or str(uuid.uuid4())}
    return api.post("/api/judgements/", body, content_type="application/json")


def test_the_api_cycle_runs_the_pinned_statements(api, make_pair, monkeypatch):
    # The warm-up vote counted the open pairs; the measured one comes within the window however slow the machine.
    monkeypatch.setattr(sampling, "REFILL_CHECK_SECONDS", 60)
    for _ in range(3):
        make_pair()
    warm = api.get("/api/pairs/next/")  # a process's first cycle fills the cache
    assert _vote(api, warm.json()["pair"]).status_code == 201

    leased, lease_sql = _statements(lambda: api.get("/api/pairs/next/"))
    assert leased.status_code == 200
    # 1 the token and its user; 2 the annotator's current lease (none); then, in one transaction: 3 the open pair
    # with the fewest votes, with its prompt, answers and campaign (FOR UPDATE SKIP LOCKED on PostgreSQL); 4 its
    # place taken (a conditional UPDATE); 5 the lease inserted (a duplicate from a second tab rolls it all back).
    # Whether the annotator is paused, their campaigns and the serving version come from the cache.
    assert len(lease_sql) == 5, "\n".join(lease_sql)
    held, held_sql = _statements(lambda: api.get("/api/pairs/next/"))
    assert held.json()["pair"] == leased.json()["pair"]
    # 1 the token; 2 the current lease's id; 3 its expiry moved; 4 the lease read with its pair (and the new expiry).
    assert len(held_sql) == 4, "\n".join(held_sql)

    voted, vote_sql = _statements(lambda: _vote(api, leased.json()["pair"]))
    assert voted.status_code == 201, voted.content
    # 1 the token; 2 the annotator's assignments of the pair, asking whether the key was used (a vote or an undone
    # one); then, in one transaction: 3 the assignment judged, if still leased; 4 the pair's place moved from lease
    # to vote, if the pair has one; 5 the vote inserted. Whether any webhook endpoint wants votes: the cache; the
    # count of open pairs (is a refill due?): one vote a second runs it, and the warm-up's did.
    assert len(vote_sql) == 5, "\n".join(vote_sql)


def test_the_page_cycle_statements(client, annotator, make_pair):
    """Not pinned (the page shows more each stage); printed for docs/benchmarks.md, and it must keep working."""
    for _ in range(3):
        make_pair()
    client.force_login(annotator)
    client.get("/")
    shown, page_sql = _statements(lambda: client.get("/"))
    pair_id, key = PAIR_ID.search(shown.text), IDEMPOTENCY_KEY.search(shown.text)
    assert pair_id and key
    form = {"choice": "left", "strength": "2", "idempotency_key": key.group(1), "rationale": ""}
    voted, judge_sql = _statements(
        lambda: client.post(f"/pairs/{pair_id.group(1)}/judge/", form, headers={"hx-request": "true"})
    )
    assert voted.status_code == 200
    assert Judgement.objects.filter(annotator=annotator).count() == 1
    print(f"\npage GET: {len(page_sql)} statements, htmx vote + next pair: {len(judge_sql)}")


def test_a_pause_is_seen_by_the_next_lease(api, annotator, staff, make_pair):
    for _ in range(3):
        make_pair()
    assert _vote(api, api.get("/api/pairs/next/").json()["pair"]).status_code == 201  # "not paused" now cached
    services.annotator_act(annotator=annotator, action="pause", by=staff, reason="checking their votes")
    assert api.get("/api/pairs/next/").status_code == 204
    services.annotator_act(annotator=annotator, action="resume", by=staff, reason="checked")
    assert api.get("/api/pairs/next/").status_code == 200


def test_a_campaign_closed_or_given_to_a_group_is_seen_by_the_next_lease(api, annotator, staff, make_pair):
    pairs = [make_pair() for _ in range(3)]
    campaign = pairs[0].campaign
    staff_api = Client()
    staff_api.force_login(staff)
    assert _vote(api, api.get("/api/pairs/next/").json()["pair"]).status_code == 201  # campaigns cached

    closed = staff_api.patch(f"/api/campaigns/{campaign.pk}/", {"is_active": False}, content_type="application/json")
    assert closed.status_code == 200
    assert api.get("/api/pairs/next/").status_code == 204
    staff_api.patch(f"/api/campaigns/{campaign.pk}/", {"is_active": True}, content_type="application/json")
    reviewers = Group.objects.create(name="reviewers")
    campaign.groups.add(reviewers)  # now only for reviewers
    assert api.get("/api/pairs/next/").status_code == 204
    annotator.groups.add(reviewers)
    assert api.get("/api/pairs/next/").status_code == 200


def test_a_webhook_endpoint_added_or_switched_on_and_off_is_seen_by_the_next_vote(api, staff, make_pair):
    for _ in range(5):
        make_pair()

    def deliveries_after_a_vote() -> int:
        assert _vote(api, api.get("/api/pairs/next/").json()["pair"]).status_code == 201
        return WebhookDelivery.objects.count()

    assert deliveries_after_a_vote() == 0  # "no endpoint wants votes" cached
    endpoint = hooks.webhook_endpoint_create(
        url="http://127.0.0.1:9/hook", event_names=["vote.recorded"], allow_private=True, created_by=staff
    )
    hooks.webhook_endpoint_set_active(endpoint=endpoint, active=False)
    assert deliveries_after_a_vote() == 0  # "no endpoint wants votes" cached again
    hooks.webhook_endpoint_set_active(endpoint=endpoint, active=True)  # a queryset update: no post_save
    assert deliveries_after_a_vote() == 1
    assert deliveries_after_a_vote() == 2


def test_a_resent_or_undone_vote_is_answered_as_before(api, annotator, make_pair):
    """The key's checks moved into the assignment's read: a resend replays, a resend of an undone vote is refused."""
    for _ in range(3):
        make_pair()
    pair = api.get("/api/pairs/next/").json()["pair"]
    key = str(uuid.uuid4())
    assert _vote(api, pair, key).status_code == 201
    assert _vote(api, pair, key).status_code == 200  # the replay
    last = Judgement.objects.get(idempotency_key=key)
    services.judgement_undo(annotator=annotator, judgement_id=last.pk)
    refused = _vote(api, pair, key)
    assert refused.status_code == 409
    assert "undone" in refused.json()["detail"]
    assert not Judgement.objects.filter(idempotency_key=key).exists()


def test_a_judge_shown_to_annotators_is_seen_by_the_next_lease(annotator, make_pair):
    """Whether a campaign shows its AI judge is a cached read of the cycle: staff turning the hint on must reach the
    very next pair dealt, not a pair dealt after the cache's lifetime."""
    from annotate.judging import services as judging
    from tests.annotate.judge_stand_in import stand_in_judge
    from tests.annotate.test_judging import BAD, CAMPAIGN, GOOD, configure

    for _ in range(3):
        make_pair(texts=(GOOD, BAD), prompt_set=CAMPAIGN)
    with stand_in_judge() as stand_in:
        judge = configure(stand_in.url, routing_allowed=False)
        assert judging.judge_run(judge_id=judge.pk, limit=10) == 3
    api = Client(headers={"authorization": f"Token {Token.objects.create(user=annotator).key}"})
    first = api.get("/api/pairs/next/").json()
    assert first["judge_hint"] is None  # "no campaign shows a judge" is cached now
    assert _vote(api, first["pair"]).status_code == 201

    configure(judge.url, routing_allowed=False, show_to_annotators=True)

    hint = api.get("/api/pairs/next/").json()["judge_hint"]
    assert hint is not None and hint["choice"] in ("left", "right")
