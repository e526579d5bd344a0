"""Head-to-head pairs against earlier versions, and the adapters vLLM holds, through the real paths: versions made by
rounds (scripted trainer), deployed into the fake model server over HTTP, pairs made by the refill."""

from __future__ import annotations

import json
import uuid

import pytest

from annotate.annotation import services
from annotate.data import exports
from annotate.data.exports import ExportFilters
from annotate.models import Campaign, Judgement, ModelVersion, Pair, TrainingRound
from annotate.quality.preferences import PreferenceRules
from annotate.rounds import services as rounds
from annotate.sampling import services as sampling

from .conftest import run_round
from .edges import ChattingModelServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def model_server():
    return ChattingModelServer(max_lora_rank=16)


@pytest.fixture
def head_to_head(loop):
    loop.HEAD_TO_HEAD_PAIR_SHARE = 0.5
    loop.PAIR_BUFFER_TARGET = 0
    return loop


def refill(settings, missing: int) -> int:
    """Ask the refill for `missing` more pairs from the serving version than it has ready."""
    settings.PAIR_BUFFER_TARGET = sampling.pairs_ready_count(ModelVersion.objects.serving()) + missing
    return sampling.pairs_refill()


def versions_of(pairs) -> list[set[str]]:
    return [{pair.completion_a.model_version.name, pair.completion_b.model_version.name} for pair in pairs]


def new_pairs(since: int) -> list[Pair]:
    return list(Pair.objects.filter(pk__gt=since).select_related("completion_a__model_version"))


def last_pair_id() -> int:
    return Pair.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def loaded_adapters(model_server) -> set[str]:
    return {name for name in model_server.models if "-round-" in name}


def test_a_share_of_new_pairs_puts_the_serving_version_against_an_earlier_one(head_to_head, serving_version):
    first = run_round().result_version
    assert ModelVersion.objects.serving() == first
    before = last_pair_id()

    assert refill(head_to_head, 8) == 8

    pairs = new_pairs(before)
    head_to_head_pairs = [pair for pair in pairs if pair.is_head_to_head]
    assert len(head_to_head_pairs) == 4  # HEAD_TO_HEAD_PAIR_SHARE of the 8 missing
    assert versions_of(head_to_head_pairs) == [{first.name, serving_version.name}] * 4
    assert all(pair.sampled_from == first for pair in pairs)
    assert versions_of(pair for pair in pairs if not pair.is_head_to_head) == [{first.name}] * 4


def test_no_share_means_no_head_to_head_pairs(head_to_head, serving_version):
    run_round()
    head_to_head.HEAD_TO_HEAD_PAIR_SHARE = 0
    before = last_pair_id()
    assert refill(head_to_head, 8) == 8
    assert not [pair for pair in new_pairs(before) if pair.is_head_to_head]


def test_every_earlier_version_gets_its_turn_the_least_compared_first(head_to_head, serving_version):
    first = run_round().result_version
    second = run_round().result_version
    assert ModelVersion.objects.serving() == second

    seen = []
    for _ in range(3):
        before = last_pair_id()
        refill(head_to_head, 4)
        opponents = {name for versions in versions_of(new_pairs(before)) for name in versions} - {second.name}
        seen.append(opponents)
    # Both earlier versions start at no votes: the newest goes first, then the base, then the one asked least.
    assert seen == [{first.name}, {serving_version.name}, {first.name}]


def test_a_refused_earlier_adapter_is_skipped_and_with_none_left_the_refill_makes_ordinary_pairs(
    head_to_head, serving_version, model_server
):
    first = run_round().result_version
    second = run_round().result_version
    model_server.models.remove(first.name)  # a restarted server forgot the retired adapter
    model_server.broken_adapters.add(first.name)  # and its directory went missing meanwhile
    before = last_pair_id()

    assert refill(head_to_head, 4) == 4
    # The newest earlier version is refused; the next one (the base model, always there) takes the slot.
    assert sorted(map(sorted, versions_of(new_pairs(before)))) == [
        sorted([second.name, serving_version.name]),
        sorted([second.name, serving_version.name]),
        [second.name],
        [second.name],
    ]

    model_server.models.remove(serving_version.name)  # now the base model does not answer either
    before = last_pair_id()
    assert refill(head_to_head, 4) == 4
    assert versions_of(new_pairs(before)) == [{second.name}] * 4


def test_a_canary_whose_adapter_is_refused_costs_its_pairs_not_the_refill(head_to_head, serving_version, model_server):
    first = run_round().result_version
    candidate = start_canary().result_version
    model_server.models.remove(candidate.name)  # a restarted server forgot it, and it cannot be loaded again
    model_server.broken_adapters.add(candidate.name)
    head_to_head.CANARY_PAIR_SHARE = 0.5
    before = last_pair_id()

    assert refill(head_to_head, 4) == 4
    assert versions_of(new_pairs(before)) == [{first.name}] * 4


def test_adapters_stay_within_max_loras_the_least_recently_used_unloaded_first(
    head_to_head, serving_version, model_server
):
    head_to_head.VLLM_MAX_LORAS = 3
    first, second, third = (run_round().result_version for _ in range(3))
    assert loaded_adapters(model_server) == {first.name, second.name, third.name}

    fourth = run_round().result_version  # serving it needs a slot: the first version, used least lately, gives it
    assert ModelVersion.objects.serving() == fourth
    assert loaded_adapters(model_server) == {second.name, third.name, fourth.name}

    opponents = []
    for _ in range(3):
        before = last_pair_id()
        refill(head_to_head, 4)
        opponents += [versions - {fourth.name} for versions in versions_of(new_pairs(before)) if len(versions) == 2]
    assert opponents == [{third.name}] * 2 + [{second.name}] * 2 + [{first.name}] * 2
    # The first version came back in the slot of the third: compared before the second, so used less lately.
    assert loaded_adapters(model_server) == {first.name, second.name, fourth.name}
    unloads = [body["lora_name"] for path, body in model_server.requests if path == "/v1/unload_lora_adapter"]
    assert unloads == [first.name, third.name]


def test_the_serving_version_and_a_running_canary_are_never_unloaded_to_make_room(
    head_to_head, serving_version, model_server, client, staff
):
    head_to_head.VLLM_MAX_LORAS = 2
    first = run_round().result_version
    second = run_round().result_version
    candidate = start_canary().result_version  # the first version gave its slot
    assert loaded_adapters(model_server) == {second.name, candidate.name}

    client.force_login(staff)
    response = client.post(f"/versions/{first.pk}/serve/")  # staff roll back while the canary runs
    assert response.status_code == 302
    assert ModelVersion.objects.serving() == first
    # No slot may be freed: the candidate must stay, and the version serving until now as well (it was serving
    # when the first one was loaded). The server holds one more than the limit rather than break the canary.
    assert loaded_adapters(model_server) == {first.name, second.name, candidate.name}
    assert not [path for path, _ in model_server.requests if path == "/v1/unload_lora_adapter"][1:]


def start_canary() -> TrainingRound:
    training_round = rounds.round_start(trigger="api", gate_mode="human")
    rounds.round_run(training_round.pk)
    training_round.refresh_from_db()
    assert training_round.status == TrainingRound.Status.CANARY
    return training_round


def test_the_arena_export_names_the_version_behind_each_side_of_a_head_to_head_pair(
    head_to_head, serving_version, tmp_path, django_user_model
):
    trained = run_round().result_version
    head_to_head.HEAD_TO_HEAD_PAIR_SHARE = 1.0
    head_to_head.JUDGEMENTS_PER_PAIR = 1
    for _ in range(2):  # the eight prompts give one head-to-head pair each per refill
        assert refill(head_to_head, 8) == 8  # every one the serving version against the base model
    voter = django_user_model.objects.create_user("arena voter")
    while (assignment := services.assignment_lease_next(annotator=voter)) is not None:
        # Always the trained version's answer, on whichever side of the screen it was shown.
        trained_side = "left" if assignment.left.model_version_id == trained.pk else "right"
        choice = trained_side if assignment.pair.is_head_to_head else "tie"
        services.judgement_record(
            annotator=voter, pair_id=assignment.pair_id, choice=choice, strength=None if choice == "tie" else 2,
            rationale="", idempotency_key=uuid.uuid4(),
        )  # fmt: skip

    path = tmp_path / "arena.jsonl"
    exports.export_write(dataset_format="arena", file_format="jsonl", filters=ExportFilters(), path=path)

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    battles = [row for row in rows if row["model_a"] != row["model_b"]]
    assert len(battles) == 16
    for row in battles:
        assert {row["model_a"], row["model_b"]} == {trained.name, serving_version.name}
        assert row[row["winner"]] == trained.name  # the winner names the version that was chosen
        for side in ("a", "b"):  # each side's model wrote that side's answer (the trained one answers briefly)
            answer = row[f"conversation_{side}"][-1]["content"]
            assert answer.startswith("Brief") == (row[f"model_{side}"] == trained.name)
    # Which version is A is drawn for each pair: 16 pairs all one way happens once in 32768 runs.
    assert 0 < sum(row["model_a"] == trained.name for row in battles) < 16


def test_head_to_head_votes_train_unless_the_rules_leave_them_out(
    head_to_head, serving_version, tmp_path, django_user_model
):
    """Rounds and exports read votes through the same rules: head-to-head votes count by default (off-policy
    preferences) and the rule `exclude_head_to_head` leaves out exactly them, saying so."""
    trained = run_round().result_version
    head_to_head.HEAD_TO_HEAD_PAIR_SHARE = 0.5
    head_to_head.JUDGEMENTS_PER_PAIR = 1
    assert refill(head_to_head, 8) == 8
    voter = django_user_model.objects.create_user("rule voter")
    while (assignment := services.assignment_lease_next(annotator=voter)) is not None:
        services.judgement_record(
            annotator=voter, pair_id=assignment.pair_id, choice="left", strength=2, rationale="",
            idempotency_key=uuid.uuid4(),
        )  # fmt: skip
    voted = Pair.objects.filter(judgements__annotator=voter)
    battles = {pair.pk for pair in voted if pair.is_head_to_head}
    ordinary = {pair.pk for pair in voted if not pair.is_head_to_head}
    assert battles and ordinary
    assert all(trained.pk in {p.completion_a.model_version_id, p.completion_b.model_version_id}
               for p in Pair.objects.filter(pk__in=battles))  # fmt: skip

    def exported(**rules: bool) -> tuple[set[str], dict[str, int]]:
        path = tmp_path / f"prefs-{len(rules)}.jsonl"
        filters = ExportFilters(annotators=("rule voter",), rules=PreferenceRules(**rules))
        exports.export_write(dataset_format="trl-preference", file_format="jsonl", filters=filters, path=path)
        answers = {json.loads(line)["chosen"][-1]["content"] for line in path.read_text().splitlines()}
        matching = Judgement.objects.filter(annotator=voter)
        return answers, filters.rules.left_out(matching)

    def chosen_texts(pairs: set[int]) -> set[str]:
        texts = set()
        for judgement in Judgement.objects.filter(annotator=voter, pair__in=pairs).select_related("pair"):
            completion = judgement.pair.completion_a if judgement.choice == "a" else judgement.pair.completion_b
            texts.add(completion.text)
        return texts

    everything, _ = exported()
    assert everything == chosen_texts(battles | ordinary)
    without, left_out = exported(exclude_head_to_head=True)
    assert without == chosen_texts(ordinary)
    assert left_out["votes on head-to-head pairs (two model versions)"] == len(battles)
    # A round reads the same rule from its setting.
    head_to_head.ROUND_EXCLUDE_HEAD_TO_HEAD = True
    assert rounds.round_rules().exclude_head_to_head is True


def test_head_to_head_pairs_need_as_many_votes_as_their_campaign_asks(head_to_head, serving_version):
    """Overlap k is the campaign's, for head-to-head pairs as for any new pair (not the deployment's default)."""
    run_round()
    Campaign.objects.update(votes_per_pair=3)
    before = last_pair_id()
    assert refill(head_to_head, 8) == 8
    pairs = new_pairs(before)
    assert any(pair.is_head_to_head for pair in pairs)
    assert {pair.judgements_required for pair in pairs} == {3}
