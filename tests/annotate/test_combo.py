"""Issue 19 parts together: a campaign of K = 3 answers per pair with written answers and multi-turn on. An annotator
ranks and writes a better version of the answer they rank first (one transaction, one idempotency key), continues
the conversation from it (the written answer, else the single answer ranked first), and a round trains on all of it
and says how many rankings, written answers and multi-turn pairs it used.

Everything is reached as a user reaches it: the staff API makes the campaign, the sampling service (against the
vLLM-shaped stub over a real socket) samples the pairs, the annotate page's views rank, write and continue, a
sampling worker's service makes the continued pair."""

from __future__ import annotations

import json
import uuid

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.annotation import rankings, services
from annotate.models import Assignment, Continuation, HumanAnswer, Judgement, Pair, Prompt
from annotate.quality.preferences import edit_preference_rows
from annotate.rounds import services as rounds
from annotate.sampling import services as sampling
from annotate.turns import services as turns
from tests.annotate.model_server_stub import ModelServerStub

pytestmark = pytest.mark.django_db

BETTER = "Steep green tea at 80 degrees for two minutes, then take the leaves out."


@pytest.fixture
def stub(settings, serving_version):
    server = ModelServerStub(served_models=(serving_version.name,))
    with server.running():
        settings.VLLM_BASE_URL = server.url
        settings.HEAD_TO_HEAD_PAIR_SHARE = 0
        yield server


@pytest.fixture
def campaign(staff, stub, settings):
    """The campaign as staff make it over the API: 3 answers per pair, written answers and multi-turn on."""
    api = APIClient()
    api.force_authenticate(staff)
    fields = {"name": "tea", "answers_per_pair": 3, "edits_allowed": True, "continuation_allowed": True}
    created = api.post("/api/campaigns/", fields, format="json")
    assert created.status_code == 201, created.content
    assert {key: created.json()[key] for key in fields} == fields
    return created.json()


def sample_pairs(settings, count: int) -> list[Pair]:
    """`count` ranking pairs sampled by a refill, as the worker makes them."""
    for number in range(count):
        Prompt.objects.create(messages=[{"role": "user", "content": f"How do I brew tea {number}?"}], prompt_set="tea")
    settings.PAIR_BUFFER_TARGET = count
    assert sampling.pairs_refill() == count
    pairs = list(Pair.objects.order_by("id"))
    assert all(pair.answer_count == 3 for pair in pairs)
    return pairs


def leased(annotator) -> Assignment:
    assignment = services.assignment_lease_next(annotator=annotator)
    assert assignment is not None
    return assignment


def screen_ranks(assignment: Assignment, by_position: list[int]) -> list[int]:
    """The ranks to post, by screen place, for a ranking by the pair's positions."""
    return [by_position[position] for position in assignment.answer_order]


def post_ranking(client, pair_id, ranks, *, choice="rank", key=None, edit=None, edit_from=None):
    data = {"choice": choice, "idempotency_key": str(key or uuid.uuid4()), "rationale": ""}
    data.update({f"rank_{place}": str(rank) for place, rank in enumerate(ranks)})
    if edit is not None:
        data["edit"] = edit
    if edit_from is not None:
        data["edit_from"] = edit_from
    return client.post(f"/pairs/{pair_id}/rank/", data)


def next_turn(client, pair_id, message="And how much tea per cup?", key=None):
    data = {"message": message, "idempotency_key": str(key or uuid.uuid4())}
    return client.post(reverse("next-turn", args=[pair_id]), data)


# --- The rule ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranking", "top"), [([2, 1, 3], 1), ([1, 2, 2, 3], 0), ([1, 1, 2], None), ([1, 1, 1], None), ([3, 2, 1], 2)]
)
def test_the_answer_ranked_first_is_the_single_best_one(ranking, top):
    assert rankings.ranking_top(ranking) == top


# --- Writing a better answer with a ranking ------------------------------------------------------------------------


def test_the_ranking_form_offers_the_box_with_its_own_keys(client, annotator, campaign, settings):
    sample_pairs(settings, 1)
    client.force_login(annotator)
    html = client.get("/").content.decode()
    assert 'data-testid="rank-form"' in html and 'data-testid="edit"' in html
    start = html.index('data-testid="rank-form"')
    form = html[start : html.index("</form>", start)]
    assert 'name="edit"' in form  # sent with the ranking, in its form
    assert 'data-testid="edit-from-top"' in form and 'data-key="z"' in form
    assert 'data-testid="edit-from-left"' not in form  # no sides, and X stays the ranking's "clear"
    assert form.count('data-key="x"') == 1
    for place in range(3):
        assert f'id="edit-source-place-{place}"' in form


def test_a_ranking_with_an_edit_stores_both_once_starting_from_the_answer_ranked_first(
    client, annotator, campaign, settings
):
    (pair,) = sample_pairs(settings, 1)
    client.force_login(annotator)
    assignment = leased(annotator)
    key = uuid.uuid4()
    ranks = screen_ranks(assignment, [2, 3, 1])  # the extra answer (position 2) first
    assert post_ranking(client, pair.pk, ranks, key=key, edit=BETTER).status_code == 302
    assert post_ranking(client, pair.pk, ranks, key=key, edit=BETTER).status_code == 302  # a resend

    judgement = Judgement.objects.get()
    assert judgement.ranking == [2, 3, 1]
    written = HumanAnswer.objects.get()
    assert written.judgement == judgement and written.text == BETTER
    assert written.started_from == pair.answers()[2]
    # It trains as chosen against every sampled answer of the pair, all three.
    rows = edit_preference_rows(written)
    assert [row["rejected"][0]["content"] for row in rows] == [answer.text for answer in pair.answers()]
    assert all(row["chosen"][0]["content"] == BETTER for row in rows)


def test_all_bad_with_an_answer_written_afresh(client, annotator, campaign, settings):
    (pair,) = sample_pairs(settings, 1)
    client.force_login(annotator)
    leased(annotator)
    assert post_ranking(client, pair.pk, [], choice="all_bad", edit=BETTER).status_code == 302
    written = HumanAnswer.objects.get()
    assert written.started_from is None and written.judgement.choice == Judgement.Choice.BOTH_BAD
    assert len(edit_preference_rows(written)) == 3


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"edit_from": "left"}, "edit_from"), ({"edit": "x" * 20_001}, "edit"), ({"edit": "nul\x00"}, "edit")],
)
def test_a_bad_edit_with_a_ranking_is_a_400_that_stores_neither(client, annotator, campaign, settings, fields, field):
    (pair,) = sample_pairs(settings, 1)
    client.force_login(annotator)
    assignment = leased(annotator)
    data = {"edit": BETTER, **fields}
    response = post_ranking(client, pair.pk, screen_ranks(assignment, [1, 2, 3]), **data)
    assert response.status_code == 400
    assert not Judgement.objects.exists() and not HumanAnswer.objects.exists()
    assert Assignment.objects.get(pk=assignment.pk).status == Assignment.Status.LEASED


# --- Continuing from a ranking -------------------------------------------------------------------------------------


def test_a_conversation_goes_on_from_the_answer_ranked_first(client, annotator, campaign, settings):
    (pair,) = sample_pairs(settings, 1)
    client.force_login(annotator)
    assignment = leased(annotator)
    assert post_ranking(client, pair.pk, screen_ranks(assignment, [3, 1, 2])).status_code == 302
    assert 'data-testid="next-turn"' in client.get("/").content.decode()
    assert next_turn(client, pair.pk).status_code == 302
    messages = Continuation.objects.get().prompt.messages
    assert messages[1] == {"role": "assistant", "content": pair.answers()[1].text}


def test_the_offer_takes_n_while_a_ranking_pair_is_shown_whose_t_ties(client, annotator, campaign, settings):
    first, _ = sample_pairs(settings, 2)
    client.force_login(annotator)
    assignment = leased(annotator)
    assert post_ranking(client, first.pk, screen_ranks(assignment, [1, 2, 3])).status_code == 302
    html = client.get("/").content.decode()
    assert 'data-testid="next-turn"' in html and 'data-testid="rank-form"' in html
    offer = html[html.index('data-testid="next-turn"') : html.index('data-testid="rank-form"')]
    assert 'data-key="n"' in offer and 'data-key="t"' not in offer
    assert html.count('data-key="t"') == 1 and "data-rank-tie" in html  # T is the ranking's tie only


def test_a_shared_first_place_has_nothing_to_continue_from_409_nothing_stored(client, annotator, campaign, settings):
    (pair,) = sample_pairs(settings, 1)
    client.force_login(annotator)
    assignment = leased(annotator)
    assert post_ranking(client, pair.pk, screen_ranks(assignment, [1, 1, 2])).status_code == 302
    assert 'data-testid="next-turn"' not in client.get("/").content.decode()  # not offered
    response = next_turn(client, pair.pk)
    assert response.status_code == 409
    assert "first place is shared" in response.content.decode()
    assert not Continuation.objects.exists() and Prompt.objects.count() == 1


def test_the_written_answer_is_the_assistants_turn_even_after_all_bad(client, annotator, campaign, settings):
    (pair,) = sample_pairs(settings, 1)
    client.force_login(annotator)
    leased(annotator)
    assert post_ranking(client, pair.pk, [], choice="all_bad", edit=BETTER).status_code == 302
    assert next_turn(client, pair.pk).status_code == 302
    assert Continuation.objects.get().prompt.messages[1] == {"role": "assistant", "content": BETTER}


def test_a_rejected_written_answer_is_not_continued_from(client, annotator, staff, campaign, settings):
    (pair,) = sample_pairs(settings, 1)
    client.force_login(annotator)
    assignment = leased(annotator)
    assert post_ranking(client, pair.pk, screen_ranks(assignment, [2, 1, 3]), edit=BETTER).status_code == 302
    written = HumanAnswer.objects.get()
    written.reject(by=staff, reason="copied from elsewhere")
    assert next_turn(client, pair.pk).status_code == 302
    assert Continuation.objects.get().prompt.messages[1]["content"] == pair.answers()[1].text


# --- All of it, and a round --------------------------------------------------------------------------------------


def test_rank_edit_continue_and_rank_again_then_a_round_counts_all_of_it(
    client, annotator, staff, campaign, settings, tmp_path
):
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ROUND_MIN_TRAIN_PAIRS = 1
    settings.ROUND_HOLDOUT_FRACTION = 0.0
    first, other = sample_pairs(settings, 2)
    client.force_login(annotator)

    # 1. Rank the first pair's three answers and write a better version of the one ranked first, on the page.
    assignment = leased(annotator)
    assert assignment.pair_id == first.pk
    assert post_ranking(client, first.pk, screen_ranks(assignment, [2, 1, 3]), edit=BETTER).status_code == 302
    written = HumanAnswer.objects.get()
    assert written.started_from == first.answers()[1]

    # 2. Continue the conversation: the written answer is the assistant's turn; a sampling worker makes the pair.
    assert next_turn(client, first.pk, "And how much tea per cup?").status_code == 302
    continuation = Continuation.objects.get()
    assert continuation.prompt.messages == [
        *first.prompt.messages,
        {"role": "assistant", "content": BETTER},
        {"role": "user", "content": "And how much tea per cup?"},
    ]
    assert turns.continuation_pair_make(continuation_id=continuation.pk)
    continuation.refresh_from_db()
    continued = continuation.pair
    assert continued is not None and continued.prompt.messages == continuation.prompt.messages
    assert continued.answer_count == 3  # the campaign's K, for the longer conversation too

    # 3. The continued pair is leased to its writer first: they rank it on the page.
    assignment = leased(annotator)
    assert assignment.pair_id == continued.pk
    assert 'data-testid="rank-form"' in client.get("/").content.decode()
    assert post_ranking(client, continued.pk, screen_ranks(assignment, [1, 3, 2])).status_code == 302
    # And the other first-turn pair, ranked without an edit.
    assignment = leased(annotator)
    assert assignment.pair_id == other.pk
    assert post_ranking(client, other.pk, screen_ranks(assignment, [1, 2, 3])).status_code == 302

    # 4. A round reads it all.
    training_round = rounds.round_start(trigger="api")
    train_path, _ = rounds.round_prepare(training_round)
    rows = [json.loads(line) for line in train_path.read_text().splitlines()]
    training_round.refresh_from_db()
    rankings_read = 3
    assert len(rows) == 3 * 3 + 3  # a strict ranking of 3 implies 3 pairs; the written answer against each of 3
    assert training_round.edits_used == 1
    assert (training_round.multi_turn_train_pairs, training_round.multi_turn_heldout_pairs) == (3, 0)
    written_rows = [row for row in rows if row["chosen"][-1]["content"] == BETTER]
    assert sorted(row["rejected"][-1]["content"] for row in written_rows) == sorted(a.text for a in first.answers())
    multi = [row for row in rows if turns.is_multi_turn(row["prompt"])]
    assert len(multi) == 3 and all(row["prompt"] == continuation.prompt.messages for row in multi)

    client.force_login(staff)
    page = client.get(reverse("round-detail", args=[training_round.pk])).content.decode()
    assert f"{rankings_read} rankings read" in page
    assert 'data-testid="edits-used">1 used' in page
    assert "3 of the training pairs and 0 of the held-out ones continue a conversation" in page


def test_the_stream_writes_every_answer_of_a_ranking_pair_and_shows_two(client, annotator, campaign, settings, stub):
    (pair,) = sample_pairs(settings, 1)
    client.force_login(annotator)
    assignment = leased(annotator)
    assert post_ranking(client, pair.pk, screen_ranks(assignment, [1, 2, 3]), edit=BETTER).status_code == 302
    assert next_turn(client, pair.pk).status_code == 302
    continuation = Continuation.objects.get()
    stub.stream_piece_seconds = 0.01
    response = client.get(reverse("continuation-stream", args=[continuation.pk]))
    body = b"".join(response.streaming_content).decode()
    events = [block for block in body.split("\n\n") if block.startswith("event: ")]
    texts = [json.loads(block.split("data: ", 1)[1]) for block in events if block.startswith("event: text")]
    assert texts and {text["side"] for text in texts} == {0, 1}  # two panes on the page
    assert events[-1].startswith("event: ready")
    continuation.refresh_from_db()
    stored = continuation.pair
    assert stored is not None and stored.answer_count == 3
    assert continuation.prompt.messages[1]["content"] == BETTER
    for side in (0, 1):  # what each pane showed is the stored answer
        streamed = "".join(text["text"] for text in texts if text["side"] == side)
        assert streamed == stored.answers()[side].text


def test_the_api_takes_a_ranking_with_an_edit_and_continues_from_it(annotator, campaign, settings):
    (pair,) = sample_pairs(settings, 1)
    api = APIClient()
    api.force_authenticate(annotator)
    leased_pair = api.get(reverse("api-pairs-next")).json()
    assert leased_pair["pair"] == pair.pk and len(leased_pair["answers"]) == 3
    body = {"pair": pair.pk, "choice": "rank", "ranks": [2, 1, 3], "idempotency_key": str(uuid.uuid4())}
    refused = api.post(reverse("api-judgements"), {**body, "edit": BETTER, "edit_from": "left"}, format="json")
    assert refused.status_code == 400 and "edit_from" in refused.json()["errors"]
    assert not Judgement.objects.exists() and not HumanAnswer.objects.exists()

    first = api.post(reverse("api-judgements"), {**body, "edit": BETTER}, format="json")
    again = api.post(reverse("api-judgements"), {**body, "edit": BETTER}, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["edit"] == again.json()["edit"] and first.json()["edit"]["text"] == BETTER
    assert HumanAnswer.objects.count() == 1 and Judgement.objects.count() == 1
    best = leased_pair["answers"][1]["text"]  # ranked 1 on the API's order
    assert HumanAnswer.objects.get().started_from.text == best

    turn = {"pair": pair.pk, "message": "More?", "idempotency_key": str(uuid.uuid4())}
    started = api.post("/api/conversations/", turn, format="json")
    assert started.status_code == 202, started.content
    assert Continuation.objects.get().prompt.messages[1] == {"role": "assistant", "content": BETTER}
