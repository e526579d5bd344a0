"""Keep talking (annotate.turns): after a vote the annotator writes the next user turn, and the pair for the longer
conversation is streamed into the page (server-sent events) or made by a worker, then leased to them.

The model server is the vLLM-shaped stub over a real socket (tests/annotate/model_server_stub.py), streaming its
answers piece by piece; it is cut mid-stream to play a model server that dies."""

import json
import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate.annotation import services as annotation
from annotate.models import Assignment, Campaign, Continuation, Judgement, Pair, Prompt
from annotate.turns import services, streaming
from tests.annotate.conftest import run_in_threads
from tests.annotate.model_server_stub import ModelServerStub

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
FIRST_PROMPT = "How do I brew green tea?"


@pytest.fixture
def campaign(db):
    return Campaign.objects.create(name="talk", title="Talk", continuation_allowed=True, votes_per_pair=1)


@pytest.fixture
def stub(settings, serving_version):
    server = ModelServerStub(served_models=(serving_version.name,))
    with server.running():
        settings.VLLM_BASE_URL = server.url
        yield server


def judged(make_pair, annotator, *, choice="left", prompt_set="talk", question=FIRST_PROMPT):
    """A pair of the campaign, leased to the annotator and judged on the page's service; returns the pair and vote."""
    pair = make_pair(
        texts=("Steep it at 80 degrees for two minutes.", "Boil it hard for ten minutes."),
        messages=[{"role": "user", "content": question}],
        prompt_set=prompt_set,
    )
    assignment = annotation.assignment_lease_next(annotator=annotator)
    assert assignment is not None and assignment.pair_id == pair.pk
    recorded = annotation.judgement_record(
        annotator=annotator,
        pair_id=pair.pk,
        choice=choice,
        strength=2 if choice in ("left", "right") else None,
        rationale="",
        idempotency_key=uuid.uuid4(),
    )
    return pair, recorded.judgement


def start(annotator, pair, key=None):
    """The next turn through the service, as the page's view calls it."""
    key = key or uuid.uuid4()
    return services.continuation_start(annotator=annotator, pair_id=pair.pk, message="More?", idempotency_key=key)


def continued(client, make_pair, annotator):
    """The annotator, logged in, votes on a pair of the campaign and continues it on the page: its continuation."""
    client.force_login(annotator)
    pair, _ = judged(make_pair, annotator)
    next_turn(client, pair)
    return Continuation.objects.get()


def chosen_text(judgement):
    pair = judgement.pair
    return (pair.completion_a if judgement.choice == Judgement.Choice.A else pair.completion_b).text


def next_turn(client, pair, message="And how much tea per cup?", key=None, htmx=True):
    data = {"message": message, "idempotency_key": str(key or uuid.uuid4())}
    return client.post(reverse("next-turn", args=[pair.pk]), data, **(HTMX if htmx else {}))


def events_of(response):
    """The stream's events as (name, data) pairs, read to its end."""
    body = b"".join(response.streaming_content).decode()
    found = []
    for block in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in lines:
            found.append((lines["event"], json.loads(lines["data"])))
    return found


def test_the_next_turn_streams_a_pair_for_the_longer_conversation_leased_to_its_writer(
    client, annotator, campaign, make_pair, stub
):
    client.force_login(annotator)
    pair, judgement = judged(make_pair, annotator, choice="left")
    page = client.get(reverse("annotate"))
    assert b'data-testid="next-turn"' in page.content  # the offer, after the vote

    posted = next_turn(client, pair)

    assert posted.status_code == 200
    assert b'data-testid="conversation-waiting"' in posted.content
    continuation = Continuation.objects.get()
    assert continuation.status == Continuation.Status.PENDING and continuation.judgement == judgement
    prompt = continuation.prompt
    assert prompt.messages == [
        {"role": "user", "content": FIRST_PROMPT},
        {"role": "assistant", "content": chosen_text(judgement)},
        {"role": "user", "content": "And how much tea per cup?"},
    ]
    assert not prompt.is_active and prompt.prompt_set == "talk" and "multi-turn" in prompt.tags

    stub.stream_piece_seconds = 0.01
    response = client.get(reverse("continuation-stream", args=[continuation.pk]))
    assert response["Content-Type"] == "text/event-stream"
    events = events_of(response)

    names = [name for name, _ in events]
    assert names[0] == "started" and names[-1] == "ready" and names.count("text") > 4
    streamed = {side: "".join(data["text"] for name, data in events if name == "text" and data["side"] == side)
                for side in (0, 1)}  # fmt: skip
    continuation.refresh_from_db()
    made = continuation.pair
    assert continuation.status == Continuation.Status.READY and made.pk == events[-1][1]["pair"]
    assert made.prompt == prompt and made.campaign == campaign
    assert (made.completion_a.text, made.completion_b.text) == (streamed[0], streamed[1])
    assert made.completion_a.sampling["seed"] != made.completion_b.sampling["seed"]
    assert stub.requests[-1]["messages"] == prompt.messages and stub.requests[-1]["stream"] is True
    lease = Assignment.objects.get(pair=made)
    assert lease.annotator == annotator and lease.status == Assignment.Status.LEASED and lease.a_on_left
    assert (made.lease_count, made.judgement_count) == (1, 0)
    assert streaming.streams_running() == 0

    shown = client.get(reverse("annotate"))  # the page now shows the pair to vote on, with the whole conversation
    assert shown.context["assignment"] == lease
    assert b"Earlier in this conversation (2 messages)" in shown.content
    assert streamed[0].encode() in shown.content


def test_a_second_turn_continues_the_continued_conversation(client, annotator, campaign, make_pair, stub):
    client.force_login(annotator)
    pair, _ = judged(make_pair, annotator)
    next_turn(client, pair, "Second message")
    first = Continuation.objects.get()
    assert services.continuation_pair_make(continuation_id=first.pk)
    first.refresh_from_db()
    again = annotation.judgement_record(
        annotator=annotator, pair_id=first.pair_id, choice="right", strength=1, rationale="",
        idempotency_key=uuid.uuid4(),
    )  # fmt: skip
    assert next_turn(client, first.pair, "Third message").status_code == 200

    second = Continuation.objects.exclude(pk=first.pk).get()
    assert second.judgement == again.judgement
    assert [m["role"] for m in second.prompt.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert second.prompt.messages[3]["content"] == first.pair.completion_b.text  # chose right: B is on the right
    assert services.is_multi_turn(second.prompt.messages)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("", "write the next message"),
        ("   \n ", "write the next message"),
        ("x" * 2_000_000, "at most 4000 characters"),
        ("before\x00after", "Null characters are not allowed"),
    ],
    ids=["empty", "blank", "2 MB", "NUL byte"],
)
def test_a_bad_message_is_refused_and_nothing_is_stored(client, annotator, campaign, make_pair, message, reason):
    client.force_login(annotator)
    pair, _ = judged(make_pair, annotator)
    prompts = Prompt.objects.count()

    response = next_turn(client, pair, message)

    assert response.status_code == 400
    assert reason in response.content.decode()
    assert not Continuation.objects.exists() and Prompt.objects.count() == prompts


def test_a_conversation_too_long_for_the_prompt_limit_is_refused(client, annotator, campaign, make_pair, settings):
    settings.PROMPT_MAX_CHARACTERS = 100
    client.force_login(annotator)
    pair, _ = judged(make_pair, annotator)
    response = next_turn(client, pair, "y" * 80)
    assert response.status_code == 400 and b"longer than 100 characters" in response.content
    assert not Continuation.objects.exists()


def test_a_next_turn_the_vote_does_not_allow_is_refused(client, annotator, other_annotator, campaign, make_pair):
    closed = Campaign.objects.create(name="closed", continuation_allowed=False)
    client.force_login(annotator)
    not_allowed, _ = judged(make_pair, annotator, prompt_set=closed.name)
    tie, _ = judged(make_pair, annotator, choice="tie", question="Tied?")
    theirs, _ = judged(make_pair, other_annotator, question="Theirs?")
    never_judged = make_pair(prompt_set="talk")
    prompts = Prompt.objects.count()

    refusals = {
        "campaign": next_turn(client, not_allowed),
        "tie": next_turn(client, tie),
        "not judged": next_turn(client, never_judged),
        "someone else's vote": next_turn(client, theirs),
        "bad key": client.post(reverse("next-turn", args=[tie.pk]), {"message": "hi", "idempotency_key": "x"}),
    }

    assert {name: response.status_code for name, response in refusals.items()} == {
        "campaign": 409, "tie": 409, "not judged": 409, "someone else's vote": 409, "bad key": 400,
    }  # fmt: skip
    assert b"does not allow continuing" in refusals["campaign"].content
    assert b"choose one answer" in refusals["tie"].content
    assert b"not judged this pair" in refusals["not judged"].content
    assert not Continuation.objects.exists() and Prompt.objects.count() == prompts


def test_a_retry_makes_one_conversation(client, annotator, campaign, make_pair):
    client.force_login(annotator)
    pair, _ = judged(make_pair, annotator)
    key = uuid.uuid4()

    first, again = next_turn(client, pair, key=key), next_turn(client, pair, key=key)
    same_words_new_key = next_turn(client, pair)  # the form sent again from a reloaded page
    other_words = next_turn(client, pair, "Something else")

    assert (first.status_code, again.status_code, same_words_new_key.status_code) == (200, 200, 200)
    assert other_words.status_code == 409 and b"continued this conversation already" in other_words.content
    assert Continuation.objects.count() == 1


def test_the_same_turn_sent_at_once_from_several_threads_makes_one_conversation(
    annotator, campaign, make_pair, transactional_db
):
    pair, _ = judged(make_pair, annotator)
    key = uuid.uuid4()
    answers = []

    def send() -> None:
        started = start(annotator, pair, key)
        answers.append(started.continuation.pk)

    run_in_threads([send] * 4)

    assert len(answers) == 4 and len(set(answers)) == 1
    assert Continuation.objects.count() == 1


def test_a_model_server_dying_mid_stream_is_said_and_the_pair_is_made_later(
    client, annotator, campaign, make_pair, stub
):
    continuation = continued(client, make_pair, annotator)
    stub.stream_cut_after = 2

    events = events_of(client.get(reverse("continuation-stream", args=[continuation.pk])))

    assert [name for name, _ in events][-1] == "failed"
    assert "stopped answering" in events[-1][1]["message"]
    assert 0 < sum(name == "text" for name, _ in events) <= 4  # each side got its first pieces, then the cut
    continuation.refresh_from_db()
    assert (continuation.status, continuation.attempts, continuation.holder) == ("pending", 1, "")
    assert not Pair.objects.filter(prompt=continuation.prompt).exists()
    assert streaming.streams_running() == 0
    page = client.get(reverse("annotate"))
    assert b"stopped answering last time" in page.content  # the page says so, and waits

    continuation.created_at = timezone.now() - timedelta(minutes=1)  # older than a stream's grace: a worker's now
    Continuation.objects.filter(pk=continuation.pk).update(created_at=continuation.created_at)
    assert services.continuations_due() == [continuation.pk]
    stub.stream_cut_after = None
    assert services.continuation_pair_make(continuation_id=continuation.pk)  # as beat's worker does

    continuation.refresh_from_db()
    assert continuation.status == Continuation.Status.READY
    assert Assignment.objects.get(pair=continuation.pair).annotator == annotator
    assert services.continuations_due() == []


def test_a_claim_whose_holder_died_is_taken_over(annotator, campaign, make_pair, stub):
    pair, _ = judged(make_pair, annotator)
    started = start(annotator, pair)
    continuation = started.continuation
    assert continuation.claim(holder="gone-host:1:dead", seconds=60)
    assert not services.continuation_pair_make(continuation_id=continuation.pk)  # held: nobody else makes it
    Continuation.objects.filter(pk=continuation.pk).update(claim_expires_at=timezone.now() - timedelta(seconds=1))

    assert services.continuations_due() == [continuation.pk]
    assert services.continuation_pair_make(continuation_id=continuation.pk)
    continuation.refresh_from_db()
    assert continuation.status == Continuation.Status.READY
    # The late holder finds the continuation no longer its own.
    assert not continuation.finish(holder="gone-host:1:dead", pair=continuation.pair)


def test_a_refused_conversation_ends_with_the_reason(client, annotator, campaign, make_pair, stub):
    stub.max_prompt_characters = 20  # the new message is longer: the server answers 400, as for a too-long context
    client.force_login(annotator)
    pair, _ = judged(make_pair, annotator)
    next_turn(client, pair, "A message longer than twenty characters")
    continuation = Continuation.objects.get()

    events = events_of(client.get(reverse("continuation-stream", args=[continuation.pk])))

    assert events[-1][0] == "failed" and "refused this conversation" in events[-1][1]["message"]
    continuation.refresh_from_db()
    assert continuation.status == Continuation.Status.FAILED and "maximum context length" in continuation.error
    assert services.continuations_due() == []
    later = client.post(reverse("continuation-later", args=[continuation.pk]), **HTMX)
    assert later.status_code == 200 and b"conversation-waiting" not in later.content


def test_streams_beyond_the_process_limit_are_refused_and_the_page_polls(
    client, annotator, campaign, make_pair, stub, settings
):
    settings.CONTINUATION_STREAMS_PER_PROCESS = 0
    continuation = continued(client, make_pair, annotator)

    never_read = client.get(reverse("continuation-stream", args=[continuation.pk]))  # takes nothing until read
    refused = events_of(client.get(reverse("continuation-stream", args=[continuation.pk])))

    assert never_read.status_code == 200 and refused == [("busy", refused[0][1])]
    continuation.refresh_from_db()
    assert continuation.status == Continuation.Status.PENDING  # nothing claimed
    assert streaming.streams_running() == 0


def test_without_javascript_a_worker_makes_the_pair_and_the_page_shows_it(
    client, annotator, campaign, make_pair, stub, monkeypatch
):
    sent = []
    monkeypatch.setattr("annotate.turns.views.enqueue", lambda name, *args: sent.append((name, args)) or True)
    client.force_login(annotator)
    pair, _ = judged(make_pair, annotator)

    posted = next_turn(client, pair, htmx=False)

    continuation = Continuation.objects.get()
    assert posted.status_code == 302 and posted["Location"] == reverse("annotate")
    assert sent == [("annotate.tasks.continuation_make", (continuation.pk,))]
    waiting = client.get(reverse("annotate"))
    assert b"The two answers are being written" in waiting.content and b'data-testid="check-now"' in waiting.content
    assert services.continuation_pair_make(continuation_id=continuation.pk)  # the worker's task
    shown = client.get(reverse("annotate"))
    assert shown.context["assignment"].pair == Continuation.objects.get().pair


def test_another_annotators_conversation_is_not_theirs_to_stream(
    client, annotator, other_annotator, campaign, make_pair
):
    pair, _ = judged(make_pair, annotator)
    started = start(annotator, pair)
    client.force_login(other_annotator)
    assert client.get(reverse("continuation-stream", args=[started.continuation.pk])).status_code == 409
    assert client.post(reverse("continuation-later", args=[started.continuation.pk])).status_code == 409
    started.continuation.refresh_from_db()
    assert started.continuation.status == Continuation.Status.PENDING and started.continuation.annotator_waits


def test_a_campaign_without_continuation_offers_nothing(client, annotator, make_pair):
    client.force_login(annotator)
    judged(make_pair, annotator, prompt_set="plain")
    assert b'data-testid="next-turn"' not in client.get(reverse("annotate")).content


@pytest.fixture
def api_as(db):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    def make(user):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        return client

    return make


def test_the_api_continues_a_conversation_and_a_worker_makes_its_pair(
    api_as, annotator, other_annotator, staff, campaign, make_pair, stub, monkeypatch
):
    sent = []
    monkeypatch.setattr("annotate.turns.api.enqueue", lambda name, *args: sent.append((name, args)) or True)
    pair, _ = judged(make_pair, annotator)
    api = api_as(annotator)
    body = {"pair": pair.pk, "message": "And then?", "idempotency_key": str(uuid.uuid4())}

    created = api.post("/api/conversations/", body, format="json")
    again = api.post("/api/conversations/", body, format="json")

    assert (created.status_code, again.status_code) == (202, 200)
    conversation = created.json()
    assert again.json()["id"] == conversation["id"] and conversation["status"] == "pending"
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant", "user"]
    assert sent == [("annotate.tasks.continuation_make", (conversation["id"],))]
    assert services.continuation_pair_make(continuation_id=conversation["id"])  # the worker's task
    ready = api.get(f"/api/conversations/{conversation['id']}/").json()
    assert ready["status"] == "ready" and ready["pair"]
    leased = api.get("/api/pairs/next/").json()
    assert leased["pair"] == ready["pair"] and leased["prompt"] == conversation["messages"]
    assert api_as(other_annotator).get(f"/api/conversations/{conversation['id']}/").status_code == 404
    assert api_as(staff).get(f"/api/conversations/{conversation['id']}/").status_code == 200


def test_the_api_refuses_bad_next_turns_with_json_and_stores_nothing(api_as, annotator, campaign, make_pair):
    pair, _ = judged(make_pair, annotator)
    api = api_as(annotator)

    def post(**fields):
        body = {"pair": pair.pk, "message": "More?", "idempotency_key": str(uuid.uuid4()), **fields}
        return api.post("/api/conversations/", body, format="json")

    answers = {
        "empty": post(message=""),
        "2 MB": post(message="x" * 2_000_000),
        "NUL": post(message="a\x00b"),
        "no key": post(idempotency_key="nope"),
        "huge id": post(pair=2**63),
        "not judged": post(pair=make_pair(prompt_set="talk").pk),
    }

    assert {name: answer.status_code for name, answer in answers.items()} == {
        "empty": 400, "2 MB": 400, "NUL": 400, "no key": 400, "huge id": 400, "not judged": 409,
    }  # fmt: skip
    assert all(answer["Content-Type"] == "application/json" for answer in answers.values())
    assert "message" in answers["2 MB"].json()["errors"]
    assert not Continuation.objects.exists()


def test_a_continued_vote_can_no_longer_be_undone(client, annotator, campaign, make_pair):
    client.force_login(annotator)
    pair, judgement = judged(make_pair, annotator)
    assert annotation.judgement_undoable(annotator=annotator) == judgement
    next_turn(client, pair)

    assert annotation.judgement_undoable(annotator=annotator) is None  # the page no longer offers it
    refused = client.post(reverse("undo"), {"judgement": judgement.pk})
    assert refused.status_code == 409 and b"you continued its conversation" in refused.content
    assert Judgement.objects.filter(pk=judgement.pk).exists() and Continuation.objects.get().judgement == judgement


def test_the_waiting_page_does_not_poll_away_a_next_turn_being_written(client, annotator, campaign, make_pair):
    client.force_login(annotator)
    judged(make_pair, annotator)
    page = client.get(reverse("annotate")).content.decode()
    assert 'data-testid="next-turn"' in page and 'data-testid="waiting"' in page
    assert 'hx-trigger="every 5s"' not in page  # a swap would take the half-written message with it


def test_a_conversation_given_up_after_its_tries_can_be_tried_again(
    client, annotator, campaign, make_pair, stub, settings
):
    settings.CONTINUATION_MAX_ATTEMPTS = 1
    continuation = continued(client, make_pair, annotator)
    stub.stream_cut_after = 1
    events = events_of(client.get(reverse("continuation-stream", args=[continuation.pk])))
    assert events[-1][0] == "failed" and "given up" in events[-1][1]["message"]
    continuation.refresh_from_db()
    assert continuation.status == Continuation.Status.FAILED
    assert services.continuations_due() == []  # nothing retries it by itself
    page = client.get(reverse("annotate"))
    assert b'data-testid="continuation-retry"' in page.content

    stub.stream_cut_after = None
    again = client.post(reverse("continuation-retry", args=[continuation.pk]), **HTMX)

    assert again.status_code == 200 and b"data-stream-url" in again.content
    assert events_of(client.get(reverse("continuation-stream", args=[continuation.pk])))[-1][0] == "ready"
    continuation.refresh_from_db()
    assert continuation.status == Continuation.Status.READY and continuation.attempts == 0
    twice = client.post(reverse("continuation-retry", args=[continuation.pk]), **HTMX)
    assert twice.status_code == 409 and b"has not failed" in twice.content
