"""Rank K answers (issue 19 part 2): a campaign of 3 or 4 answers per pair samples them, the annotate page ranks them
(ties and "all bad" allowed), a ranking is stored once with its A/B choice, and a ranking that is not one, or one on
a pair the annotator was not shown, is a clear 4xx that stores nothing."""

from __future__ import annotations

import uuid
from itertools import combinations
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from annotate.annotation import rankings, services
from annotate.models import Assignment, Campaign, Judgement, Pair, Prompt, UndoneJudgement
from annotate.sampling import services as sampling
from tests.annotate.model_server_stub import ModelServerStub
from tests.annotate.ranking_pairs import sample

pytestmark = pytest.mark.django_db


def post_ranking(client, pair_id, ranks, *, choice="rank", key=None, rationale=""):
    data = {"choice": choice, "idempotency_key": str(key or uuid.uuid4()), "rationale": rationale}
    data.update({f"rank_{place}": str(rank) for place, rank in enumerate(ranks)})
    return client.post(f"/pairs/{pair_id}/rank/", data)


# --- The rules of a ranking --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranks", "count", "problem"),
    [
        ([1, 2, 3, 4], 4, None),
        ([1, 1, 2, 2], 4, None),
        ([2, 2, 2], 3, None),  # all tied is a ranking (the choice is a tie)
        ([1, 2, 3], 4, "exactly 4"),  # wrong length
        ([1, 2, 3, 4, 1], None, "at most 4"),
        ([1, 2, 3, 3], None, None),
        ([1, 2, 5, 3], 4, "from 1 (best) to 4"),  # out of range
        ([0, 1, 2, 3], 4, "from 1 (best) to 4"),
        ([1, "2", 3, 4], 4, "whole number"),
        ([1, True, 3, 4], 4, "whole number"),
        ("1234", 4, "a list"),
    ],
)
def test_what_a_ranking_is(ranks, count, problem):
    found = rankings.ranks_errors(ranks, count)
    assert (found is None) if problem is None else (problem in found)


def test_implied_pairs_are_every_two_answers_of_different_rank_weighing_k_minus_1_together():
    assert rankings.implied_pairs([2, 1, 3]) == [(1, 0), (0, 2), (1, 2)]
    assert rankings.implied_pairs([1, 1, 2, 2]) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert rankings.implied_pairs([1, 1, 1]) == []
    for ranking in ([1, 2, 3, 4], [1, 1, 1, 2], [1, 2, 2, 2], [1, 1, 2, 2], [1, 2], [2, 1, 3]):
        implied = rankings.implied_pairs(ranking)
        # Independently: count the ordered answers by brute force over all position pairs.
        expected = sum(1 for first, second in combinations(ranking, 2) if first != second)
        assert len(implied) == expected
        weight = rankings.implied_pair_weight(len(ranking), len(implied))
        assert weight * len(implied) == pytest.approx(len(ranking) - 1)
        assert weight <= 1.0  # no implied pair outweighs one vote


def test_screen_ranks_become_ranks_by_position_and_an_a_b_choice():
    # Shown: position 2 first, then B, D, A. The annotator ranks them 1, 2, 2, 3.
    ranking = rankings.ranking_by_position([1, 2, 2, 4], [2, 1, 3, 0])
    assert ranking == [3, 2, 1, 2]  # dense: 4 -> 3
    assert rankings.choice_of_ranking(ranking) == Judgement.Choice.B
    assert rankings.choice_of_ranking([1, 1, 2]) == Judgement.Choice.TIE
    assert rankings.choice_of_ranking([1, 1, 1], all_bad=True) == Judgement.Choice.BOTH_BAD
    assert rankings.ranking_describe(ranking, "ABCD") == "C > B = D > A"


# --- Sampling --------------------------------------------------------------------------------------------------


def test_a_campaign_of_k_answers_samples_k_per_pair_with_their_lineage(serving_version, settings, staff):
    api = APIClient()
    api.force_authenticate(staff)
    created = api.post("/api/campaigns/", {"name": "nursing", "answers_per_pair": 3}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["answers_per_pair"] == 3
    for number in range(2):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Dose {number}?"}], prompt_set="nursing")
    with ModelServerStub(served_models=(serving_version.name,)).running() as server:
        settings.VLLM_BASE_URL = server.url
        settings.HEAD_TO_HEAD_PAIR_SHARE = 0
        settings.PAIR_BUFFER_TARGET = 2
        assert sampling.pairs_refill() == 2
    assert len(server.requests) == 6
    for pair in Pair.objects.all():
        answers = pair.answers()
        assert pair.answer_count == 3 and pair.is_ranking
        assert len({answer.pk for answer in answers}) == 3
        assert all(answer.model_version == serving_version and answer.seed for answer in answers)


@pytest.mark.parametrize("value", [1, 5, "four", None])
def test_answers_per_pair_out_of_bounds_is_refused(staff, value):
    api = APIClient()
    api.force_authenticate(staff)
    response = api.post("/api/campaigns/", {"name": "bad", "answers_per_pair": value}, format="json")
    assert response.status_code == 400
    assert "answers_per_pair" in response.json()["errors"]
    assert not Campaign.objects.filter(name="bad").exists()


def test_the_campaign_page_sets_answers_per_pair(client, staff):
    client.force_login(staff)
    form = {"name": "paged", "votes_per_pair": "1", "gold_rate": "0", "repeat_rate": "0", "is_active": "on"}
    assert client.post("/campaigns/", {**form, "answers_per_pair": "9"}).status_code == 400
    assert not Campaign.objects.filter(name="paged").exists()
    assert client.post("/campaigns/", {**form, "answers_per_pair": "4"}).status_code == 303
    assert Campaign.objects.get(name="paged").answers_per_pair == 4


def test_identical_answers_make_no_ranking_pair(serving_version):
    prompt = Prompt.objects.create(messages=[{"role": "user", "content": "Same?"}], prompt_set="ranked")
    made = sampling.pair_create(
        prompt=prompt,
        version=serving_version,
        first=sample("one"),
        second=sample("two"),
        extra=[(serving_version, sample("one "))],
    )
    assert made is None and not Pair.objects.exists()


# --- The annotate page ---------------------------------------------------------------------------------------


def leased(annotator) -> Assignment:
    assignment = services.assignment_lease_next(annotator=annotator)
    assert assignment is not None
    return assignment


def test_the_page_shows_every_answer_with_its_rank_choices_in_a_stable_order(client, annotator, make_ranking_pair):
    pair = make_ranking_pair()
    client.force_login(annotator)
    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="rank-form"' in html and 'name="choice" value="left"' not in html
    assignment = Assignment.objects.get(pair=pair, annotator=annotator)
    answers = pair.answers()
    shown = [answers[position].text for position in assignment.answer_order]
    assert [html.index(text) for text in shown] == sorted(html.index(text) for text in shown)
    for place in range(4):
        for rank in range(1, 5):
            assert f'name="rank_{place}" value="{rank}"' in html
    assert client.get("/").content.decode().count('data-testid="answer-') == 4
    assert Assignment.objects.get(pk=assignment.pk).answer_order == assignment.answer_order


def test_a_ranking_is_stored_by_the_pairs_positions_with_its_choice(client, annotator, make_ranking_pair):
    pair = make_ranking_pair()
    client.force_login(annotator)
    assignment = leased(annotator)
    response = post_ranking(client, pair.pk, [2, 1, 3, 3], rationale="second is clearest")
    assert response.status_code == 302
    judgement = Judgement.objects.get()
    expected = rankings.ranking_by_position([2, 1, 3, 3], assignment.answer_order)
    assert judgement.ranking == expected
    assert judgement.choice == rankings.choice_of_ranking(expected)
    assert judgement.strength is None and judgement.rationale == "second is clearest"
    pair.refresh_from_db()
    assert (pair.judgement_count, pair.lease_count) == (1, 0)


def test_all_bad_needs_no_ranks(client, annotator, make_ranking_pair):
    pair = make_ranking_pair()
    client.force_login(annotator)
    leased(annotator)
    assert post_ranking(client, pair.pk, [], choice="all_bad").status_code == 302
    judgement = Judgement.objects.get()
    assert (judgement.choice, judgement.ranking) == (Judgement.Choice.BOTH_BAD, [1, 1, 1, 1])


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"rank_0": "1", "rank_1": "2", "rank_2": "3"}, "ranks"),  # three ranks for four answers
        ({"rank_0": "1", "rank_1": "2", "rank_3": "3"}, "__all__"),  # one answer left out
        ({"rank_0": "1", "rank_1": "2", "rank_2": "3", "rank_3": "5"}, "rank_3"),  # out of range
        ({"rank_0": "1", "rank_1": "2", "rank_2": "3", "rank_3": "x"}, "rank_3"),
        ({"rank_0": "1", "rank_1": "2", "rank_2": "3", "rank_3": "-1"}, "rank_3"),
        ({}, "ranks"),
        ({"rank_0": "1"}, "ranks"),
    ],
)
def test_a_ranking_that_is_not_one_is_refused_and_stores_nothing(client, annotator, make_ranking_pair, data, field):
    pair = make_ranking_pair()
    client.force_login(annotator)
    leased(annotator)
    response = client.post(f"/pairs/{pair.pk}/rank/", {"choice": "rank", "idempotency_key": str(uuid.uuid4()), **data})
    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode()
    assert not Judgement.objects.exists()
    pair.refresh_from_db()
    assert (pair.judgement_count, pair.lease_count) == (0, 1)
    assert Assignment.objects.get().status == Assignment.Status.LEASED


def test_a_left_right_vote_on_a_ranking_pair_is_refused(client, annotator, make_ranking_pair):
    pair = make_ranking_pair()
    client.force_login(annotator)
    leased(annotator)
    response = client.post(f"/pairs/{pair.pk}/judge/", {"choice": "left", "strength": "2",
                                                        "idempotency_key": str(uuid.uuid4())})  # fmt: skip
    assert response.status_code == 400
    assert "rank them" in response.content.decode()
    assert not Judgement.objects.exists()


def test_a_ranking_of_a_pair_not_shown_to_the_annotator_is_refused(
    client, annotator, other_annotator, make_ranking_pair
):
    pair = make_ranking_pair()
    leased(other_annotator)  # the pair is on someone else's screen, never on this annotator's
    client.force_login(annotator)
    response = post_ranking(client, pair.pk, [1, 2, 3, 4])
    assert response.status_code == 409
    assert "not leased to you" in response.content.decode()
    assert not Judgement.objects.exists()
    missing = post_ranking(client, 999_999, [1, 2, 3, 4])
    assert missing.status_code == 409 and not Judgement.objects.exists()


def test_a_resent_ranking_is_stored_once(client, annotator, make_ranking_pair):
    pair = make_ranking_pair()
    make_ranking_pair()  # the next one, so that the page has another pair after the vote
    client.force_login(annotator)
    leased(annotator)
    key = uuid.uuid4()
    assert post_ranking(client, pair.pk, [1, 2, 3, 4], key=key).status_code == 302
    again = post_ranking(client, pair.pk, [1, 2, 3, 4], key=key)
    assert again.status_code == 302
    assert Judgement.objects.count() == 1
    pair.refresh_from_db()
    assert pair.judgement_count == 1
    other_key = post_ranking(client, pair.pk, [4, 3, 2, 1])
    assert other_key.status_code == 409 and Judgement.objects.count() == 1


def test_the_api_ranks_in_the_order_it_listed_the_answers(annotator, make_ranking_pair):
    pair = make_ranking_pair()
    api = APIClient()
    api.force_authenticate(annotator)
    offered = api.get("/api/pairs/next/").json()
    assert offered["pair"] == pair.pk and len(offered["answers"]) == 4
    key = str(uuid.uuid4())
    bad = api.post("/api/judgements/", {"pair": pair.pk, "choice": "rank", "ranks": [1, 2, 3], "idempotency_key": key},
                   format="json")  # fmt: skip
    assert bad.status_code == 400 and "ranks" in bad.json()["errors"] and not Judgement.objects.exists()
    body = {"pair": pair.pk, "choice": "rank", "ranks": [1, 3, 2, 4], "idempotency_key": key}
    first = api.post("/api/judgements/", body, format="json")
    assert first.status_code == 201, first.content
    again = api.post("/api/judgements/", body, format="json")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    judgement = Judgement.objects.get()
    texts = [answer["text"] for answer in offered["answers"]]
    answers = pair.answers()
    by_text = {answers[position].text: rank for position, rank in enumerate(judgement.ranking)}
    assert [by_text[text] for text in texts] == [1, 3, 2, 4]
    assert first.json()["ranking"] == judgement.ranking


def test_undoing_a_ranking_offers_its_ranks_again(client, annotator, make_ranking_pair):
    pair = make_ranking_pair()
    client.force_login(annotator)
    leased(annotator)
    assert post_ranking(client, pair.pk, [3, 1, 2, 4]).status_code == 302
    judgement = Judgement.objects.get()
    undone = client.post("/votes/undo/", {"judgement": judgement.pk})
    assert undone.status_code == 302
    assert UndoneJudgement.objects.get().ranking == judgement.ranking
    html = client.get("/").content.decode()
    for place, rank in enumerate([3, 1, 2, 4]):
        assert f'name="rank_{place}" value="{rank}" data-testid="rank-{place + 1}-{rank}" checked' in html


def test_a_campaign_of_two_keeps_the_pair_page(client, annotator, make_pair):
    make_pair()
    client.force_login(annotator)
    html = client.get("/").content.decode()
    assert 'name="choice" value="left"' in html and "rank-form" not in html


# --- Training -------------------------------------------------------------------------------------------------


def rank_through_the_service(annotator, pair, ranks_on_screen):
    assignment = leased(annotator)
    assert assignment.pair_id == pair.pk
    services.judgement_record(annotator=annotator, pair_id=pair.pk, choice="rank", strength=None, rationale="",
                              idempotency_key=uuid.uuid4(), ranks=ranks_on_screen)  # fmt: skip
    return rankings.ranking_by_position(ranks_on_screen, assignment.answer_order)


def test_a_round_trains_on_the_pairs_rankings_imply_weighing_k_minus_1_each(
    settings, tmp_path, annotator, make_ranking_pair, make_pair
):
    import json

    from annotate.rounds import services as rounds

    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ROUND_MIN_TRAIN_PAIRS = 2
    settings.ROUND_HOLDOUT_FRACTION = 0.0
    strict, tied = make_ranking_pair(), make_ranking_pair()
    rankings_given = {strict.pk: rank_through_the_service(annotator, strict, [1, 2, 3, 4]),
                      tied.pk: rank_through_the_service(annotator, tied, [1, 1, 2, 2])}  # fmt: skip
    for number in range(2):
        pair = make_pair(texts=(f"short {number}", f"a much longer answer {number}"))
        assignment = leased(annotator)
        assert assignment.pair_id == pair.pk
        services.judgement_record(annotator=annotator, pair_id=pair.pk, choice="left" if assignment.a_on_left else
                                  "right", strength=2, rationale="", idempotency_key=uuid.uuid4())  # fmt: skip
    training_round = rounds.round_start(trigger="api")
    train_path, _ = rounds.round_prepare(training_round)

    rows = [json.loads(line) for line in train_path.read_text().splitlines()]
    assert len(rows) == 6 + 4 + 2  # every two answers ranked apart, and one row per vote
    rank_of_text = {}
    for pair in (strict, tied):
        for answer, rank in zip(pair.answers(), rankings_given[pair.pk], strict=True):
            rank_of_text[answer.text] = (pair.pk, rank)
    raw_weights = {}
    for row in rows:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        if chosen in rank_of_text:
            (pair_id, chosen_rank), (other_pair, rejected_rank) = rank_of_text[chosen], rank_of_text[rejected]
            assert pair_id == other_pair and chosen_rank < rejected_rank
            raw_weights.setdefault(pair_id, []).append(row["weight"])
        else:
            assert chosen.startswith("short")
            raw_weights.setdefault("vote", []).append(row["weight"])
    # Normalised to mean 1 over 12 rows of raw weights 0.5 (x6), 0.75 (x4), 1 (x2): scale 12/8.
    assert raw_weights[strict.pk] == [pytest.approx(0.75)] * 6
    assert raw_weights[tied.pk] == [pytest.approx(1.125)] * 4
    assert raw_weights["vote"] == [pytest.approx(1.5)] * 2
    # Each ranking weighs as K - 1 = 3 votes.
    assert sum(raw_weights[strict.pk]) / 1.5 == pytest.approx(3) == sum(raw_weights[tied.pk]) / 1.5
    training_round.refresh_from_db()
    assert "2 rankings read" in training_round.weighting_basis


# --- Agreement --------------------------------------------------------------------------------------------------


def test_ranking_agreement_against_a_hand_count():
    from annotate.quality.agreement import Vote, agreement_summary

    # Two annotators rank three answers of three pairs; they disagree only on pair 2's first two answers.
    given = {("x", 1): (1, 2, 3), ("y", 1): (1, 2, 3), ("x", 2): (1, 2, 3), ("y", 2): (2, 1, 3),
             ("x", 3): (3, 2, 1), ("y", 3): (3, 2, 1)}  # fmt: skip
    votes = [Vote(annotator=who, item=item, label="a", ranking=ranks) for (who, item), ranks in given.items()]
    summary = agreement_summary(votes)

    # Kendall's tau by hand: pair 1 and 3 agree on all 3 orders (tau 1); pair 2 on 2 of 3: (2 - 1) / 3.
    assert summary.ranking_kendall_tau == pytest.approx((1 + 1 / 3 + 1) / 3)
    # Alpha by hand: 9 units of two values; -1 (first better) 11 times, +1 7 times, one unit split (-1, +1). With two
    # values ordinal alpha is nominal alpha: 1 - (n - 1) * D_o / D_e = 1 - 17 * 2 / (2 * 11 * 7).
    assert summary.ranking_alpha_ordinal == pytest.approx(1 - 17 * 2 / (2 * 11 * 7))
    assert summary.rankings == 6


def test_kendall_tau_with_ties_matches_a_hand_count_of_tau_b():
    from annotate.quality.agreement import Vote, ranking_kendall_tau

    def tau_b(first, second):
        concordant = discordant = tied_first = tied_second = 0
        for i, j in combinations(range(len(first)), 2):
            a, b = first[i] - first[j], second[i] - second[j]
            if a == 0 and b == 0:
                continue
            if a == 0:
                tied_first += 1
            elif b == 0:
                tied_second += 1
            elif (a > 0) == (b > 0):
                concordant += 1
            else:
                discordant += 1
        pairs_first = concordant + discordant + tied_second
        pairs_second = concordant + discordant + tied_first
        return (concordant - discordant) / (pairs_first * pairs_second) ** 0.5

    cases = [((1, 1, 2, 3), (1, 2, 2, 3)), ((1, 2, 3, 4), (4, 3, 2, 1)), ((1, 1, 2, 2), (2, 1, 1, 2))]
    for first, second in cases:
        votes = [Vote("x", "p", "a", ranking=first), Vote("y", "p", "a", ranking=second)]
        assert ranking_kendall_tau(votes) == pytest.approx(tau_b(first, second))
    all_bad = [Vote("x", "p", "both_bad", ranking=(1, 1, 1)), Vote("y", "p", "a", ranking=(1, 2, 3))]
    assert ranking_kendall_tau(all_bad) is None


def test_the_quality_page_reads_rankings(
    client, staff, annotator, other_annotator, ranking_campaign, make_ranking_pair
):
    Campaign.objects.filter(pk=ranking_campaign.pk).update(votes_per_pair=2)
    pair = make_ranking_pair()
    for who in (annotator, other_annotator):
        rank_through_the_service(who, pair, [1, 2, 3, 4])
    client.force_login(staff)
    html = client.get("/quality/").content.decode()
    assert 'data-testid="rankings">2 ' in html and "Kendall" in html


# --- Exports --------------------------------------------------------------------------------------------------


def test_exports_give_rankings_as_implied_pairs_and_as_ultrafeedback_rows(
    tmp_path, settings, staff, annotator, make_ranking_pair, make_pair
):
    import json

    import datasets

    from annotate.data import exports
    from annotate.data.exports import ExportFilters

    settings.EXPORT_DIR = tmp_path / "exports"
    pair = make_ranking_pair()
    ranking = rank_through_the_service(annotator, pair, [1, 2, 3, 4])
    voted = make_pair()
    assignment = leased(annotator)
    assert assignment.pair_id == voted.pk
    services.judgement_record(annotator=annotator, pair_id=voted.pk, choice="left", strength=3, rationale="",
                              idempotency_key=uuid.uuid4())  # fmt: skip
    rank_of = {answer.text: rank for answer, rank in zip(pair.answers(), ranking, strict=True)}

    runs = {}
    for dataset_format, file_format, weighting in (("trl-preference", "jsonl", "strength"),
                                                   ("ultrafeedback", "parquet", "none")):  # fmt: skip
        created = exports.export_create(created_by=staff, dataset_format=dataset_format, file_format=file_format,
                                        filters=ExportFilters(weighting=weighting))  # fmt: skip
        runs[dataset_format] = exports.export_run(export=created)
        assert runs[dataset_format].status == "done", runs[dataset_format].error

    binarised = [json.loads(line) for line in Path(runs["trl-preference"].path).read_text().splitlines()]
    ranked_rows = [row for row in binarised if row["pair_id"] == pair.pk]
    assert len(ranked_rows) == 6 and len(binarised) == 7
    for row in ranked_rows:
        assert rank_of[row["chosen"][0]["content"]] < rank_of[row["rejected"][0]["content"]]
        assert row["weight"] == pytest.approx(2 / 3 * 3 / 6, abs=1e-4)  # strength unknown (clearly) x share
    [vote_row] = [row for row in binarised if row["pair_id"] == voted.pk]
    assert vote_row["weight"] == 1.0

    loaded = datasets.load_dataset("parquet", data_files=runs["ultrafeedback"].path, split="train")
    assert loaded.num_rows == 1  # the vote on two answers is no ranking
    [row] = list(loaded)
    assert row["pair_id"] == pair.pk and row["all_bad"] is False
    assert {c["response"][0]["content"]: c["rank"] for c in row["completions"]} == rank_of
    assert row["prompt"] == pair.prompt.messages
    trl = datasets.load_dataset("json", data_files=runs["trl-preference"].path, split="train")
    assert trl.num_rows == 7 and set(trl.column_names) >= {"prompt", "chosen", "rejected", "weight"}

    for run in runs.values():
        card = Path(run.path).with_suffix(".md").read_text()
        assert "| rankings among them (3 or 4 answers ranked) | 1 |" in card
    assert "weigh K - 1 together" in Path(runs["trl-preference"].path).with_suffix(".md").read_text()
