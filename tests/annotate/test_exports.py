import hashlib
import json
import re
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from jsonschema import Draft202012Validator

from annotate.data import exports, imports
from annotate.data.exports import ExportFilters
from annotate.errors import Invalid
from annotate.models import Campaign, Completion, Export, Judgement, ModelVersion
from annotate.quality.preferences import PreferenceRules
from tests.annotate.voting import rank_as_annotator, vote_as_annotator
from tests.conftest import REPO, SHARED_DATA
from training.data import hh_rlhf_to_trl

pytestmark = pytest.mark.django_db

HH_RLHF = SHARED_DATA / "hh_rlhf_harmless_dev.jsonl"
BASE_MODEL_DIR = REPO / "var" / "models" / "smollm2-135m-instruct"

MESSAGES_SCHEMA = {
    "type": "array",
    "minItems": 2,
    "items": {
        "type": "object",
        "required": ["role", "content"],
        "additionalProperties": False,
        "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}},
    },
}
ARENA_ROW_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "question_id", "model_a", "model_b", "winner", "judge", "conversation_a", "conversation_b", "turn", "anony",
        "tstamp",
    ],
    "properties": {
        "question_id": {"type": "string", "minLength": 1},
        "model_a": {"type": "string", "minLength": 1},
        "model_b": {"type": "string", "minLength": 1},
        "winner": {"enum": ["model_a", "model_b", "tie", "tie (bothbad)"]},
        "judge": {"type": "string", "pattern": "^(judge|imported)_[0-9a-f]{16}$"},
        "conversation_a": MESSAGES_SCHEMA,
        "conversation_b": MESSAGES_SCHEMA,
        "turn": {"type": "integer", "minimum": 1},
        "anony": {"const": True},
        "tstamp": {"type": "number"},
    },
}  # fmt: skip
ARENA_ROW = Draft202012Validator(ARENA_ROW_SCHEMA)


@pytest.fixture
def voted(make_pair, django_user_model):
    """Make a pair with votes (a, b, tie, both_bad), each from its own annotator (voter0, voter1, ...), cast through
    the annotation services."""
    users = [django_user_model.objects.create_user(f"voter{i}") for i in range(5)]

    def make(*choices, texts=("answer A", "answer B"), strength=2, **pair_options):
        pair = make_pair(texts=texts, required=len(choices), **pair_options)
        for user, choice in zip(users, choices, strict=False):
            vote_as_annotator(user, pair=pair, choice=choice, strength=strength)
        return pair

    return make


def export(tmp_path, dataset_format, file_format="jsonl", **filters):
    path = tmp_path / f"out.{file_format}"
    stats = exports.export_write(
        dataset_format=dataset_format, file_format=file_format, filters=ExportFilters(**filters), path=path
    )
    return read_rows(path), stats


def read_rows(path):
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_trl_preference_rows_carry_the_winner_and_their_lineage(tmp_path, voted, serving_version):
    pair = voted("b", "b", "a", texts=("loser", "winner"), strength=3)
    voted("tie")
    voted("both_bad")

    rows, stats = export(tmp_path, "trl-preference", rules=PreferenceRules(include_ties=True, include_both_bad=True))

    assert rows == [
        {
            "prompt": pair.prompt.messages,
            "chosen": [{"role": "assistant", "content": "winner"}],
            "rejected": [{"role": "assistant", "content": "loser"}],
            "margin": 1.0,
            "pair_id": pair.pk,
            "prompt_id": pair.prompt_id,
            "prompt_set": "default",
            "chosen_model": serving_version.name,
            "rejected_model": serving_version.name,
            "sampled_from": serving_version.name,
            "on_policy": True,
            "chosen_sampling": "temperature 0.8, top_p 0.95, max_tokens 64",  # what make_pair's answers record
            "rejected_sampling": "temperature 0.8, top_p 0.95, max_tokens 64",
            "votes": 3,
            "agreement": 0.6667,
            "source": "human",
        }
    ]
    assert (stats.rows, stats.verdicts, stats.votes_read) == (1, 1, 5)
    assert stats.left_out == {"tie": 1, "both_bad": 1}


def test_trl_unpaired_gives_a_positive_and_a_negative_and_both_bad_gives_two_negatives(tmp_path, voted):
    won = voted("a", texts=("good", "bad"))
    both_bad = voted("both_bad", texts=("bad one", "bad two"))
    voted("tie")

    rows, stats = export(tmp_path, "trl-unpaired", rules=PreferenceRules(include_ties=True, include_both_bad=True))

    assert [(row["pair_id"], row["completion"][0]["content"], row["label"], row["verdict"]) for row in rows] == [
        (won.pk, "good", True, "a"),
        (won.pk, "bad", False, "a"),
        (both_bad.pk, "bad one", False, "both_bad"),
        (both_bad.pk, "bad two", False, "both_bad"),
    ]
    assert all(row["prompt"][-1]["role"] == "user" for row in rows)
    assert rows[0]["completion_id"] == won.completion_a_id and rows[0]["model"] == "policy-v0-secret-name"
    assert stats.left_out == {"tie": 1}


def test_arena_is_one_row_per_vote_with_pseudonymous_judges(tmp_path, voted, django_user_model):
    pair = voted("a", "b", "b")
    voted("tie", "both_bad")

    rows, stats = export(tmp_path, "arena", rules=PreferenceRules(include_ties=True, include_both_bad=True))

    assert len(rows) == 5 and stats.rows == 5
    for row in rows:
        ARENA_ROW.validate(row)
    first_pair = [row for row in rows if row["question_id"] == str(pair.pk)]
    assert [row["winner"] for row in first_pair] == ["model_a", "model_b", "model_b"]
    assert sorted(row["winner"] for row in rows if row["question_id"] != str(pair.pk)) == ["tie", "tie (bothbad)"]
    judges = [row["judge"] for row in rows]
    assert judges[0] == judges[3] and len(set(judges[:3])) == 3  # voter0 voted on both pairs
    usernames = set(django_user_model.objects.values_list("username", flat=True))
    assert not usernames & set(judges) and not any(name in judge for judge in judges for name in usernames)
    assert first_pair[0]["conversation_a"][-1] == {"role": "assistant", "content": "answer A"}
    assert first_pair[0]["conversation_a"][:-1] == pair.prompt.messages


@pytest.mark.parametrize("local_zone", ["UTC", "Asia/Kolkata", "America/New_York"])
def test_arena_times_and_the_cards_are_the_votes_whatever_the_servers_time_zone(
    tmp_path, voted, staff, settings, monkeypatch, local_zone
):
    """The votes' times are UTC in the database; the process's own zone (TZ) must not move them."""
    monkeypatch.setenv("TZ", local_zone)
    time.tzset()
    try:
        pair = voted("a", "b")
        rows, stats = export(tmp_path, "arena")
    finally:
        monkeypatch.undo()
        time.tzset()
    cast = sorted(Judgement.objects.filter(pair=pair).values_list("created_at", flat=True))
    assert [row["tstamp"] for row in rows] == [moment.timestamp() for moment in cast]
    assert (stats.first_vote, stats.last_vote) == (cast[0], cast[-1])


def test_hh_rlhf_rows_are_transcripts_that_read_back_as_the_same_preference(tmp_path, voted):
    pair = voted(
        "a",
        texts=("Paris.", "Lyon."),
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Which France?"},
            {"role": "user", "content": "The country."},
        ],
    )
    rows, _ = export(tmp_path, "hh-rlhf")
    assert rows[0]["chosen"] == (
        "\n\nHuman: Capital of France?\n\nAssistant: Which France?\n\nHuman: The country.\n\nAssistant: Paris."
    )
    assert rows[0]["pair_id"] == pair.pk
    back = hh_rlhf_to_trl(rows[0])
    assert back["prompt"] == pair.prompt.messages[1:]  # the system turn has no place in HH-RLHF
    assert (back["chosen"][0]["content"], back["rejected"][0]["content"]) == ("Paris.", "Lyon.")


def test_filters(tmp_path, voted, make_pair, serving_version, django_user_model):
    old = voted("a")
    Judgement.objects.filter(pair=old).update(created_at=timezone.now() - timedelta(days=10))
    recent = voted("b")
    other_set = voted("a")
    other_set.prompt.prompt_set = "other"
    other_set.prompt.save()
    candidate = ModelVersion.objects.create(name="candidate-1", base_model="/models/base")
    off_policy = voted("a")
    Completion.objects.filter(pk=off_policy.completion_b_id).update(model_version=candidate)
    contested = voted("a", "a", "b")

    def pair_ids(**filters):
        return [row["pair_id"] for row in export(tmp_path, "trl-preference", **filters)[0]]

    everything = [old.pk, recent.pk, other_set.pk, off_policy.pk, contested.pk]
    assert pair_ids() == everything
    today = timezone.now().date()
    assert pair_ids(date_from=today - timedelta(days=1)) == everything[1:]
    assert pair_ids(date_to=today - timedelta(days=5)) == [old.pk]
    assert pair_ids(prompt_sets=("other",)) == [other_set.pk]
    assert pair_ids(model_versions=(serving_version.name,)) == everything
    assert pair_ids(model_versions=("candidate-1",)) == []
    assert pair_ids(on_policy=True) == [old.pk, recent.pk, other_set.pk, contested.pk]
    assert pair_ids(annotators=("voter2",)) == [contested.pk]  # only voter2's vote: b
    assert pair_ids(sources=("imported",)) == []
    assert pair_ids(rules=PreferenceRules(min_agreement=0.8)) == everything[:4]
    assert pair_ids(rules=PreferenceRules(combine="unanimous")) == everything[:4]
    assert pair_ids(rules=PreferenceRules(combine="all")) == [*everything, contested.pk, contested.pk]


def test_imported_pairs_are_never_on_policy(tmp_path):
    call_command("import_preferences", str(HH_RLHF), "--format", "hh-rlhf", "--skip-bad", verbosity=0)
    rows, _ = export(tmp_path, "trl-preference")
    assert len(rows) == 997 and not any(row["on_policy"] for row in rows)
    assert {(row["source"], row["sampled_from"], row["margin"]) for row in rows} == {
        ("imported", "imported:hh-rlhf", 0.0)
    }
    assert export(tmp_path, "trl-preference", on_policy=True)[0] == []


def test_votes_of_one_pair_split_across_read_chunks_are_combined(tmp_path, voted, monkeypatch):
    monkeypatch.setattr(exports.stream, "READ_CHUNK", 2)
    pairs = [voted("a", "b", "b"), voted("a", "a", "b"), voted("b")]
    rows, stats = export(tmp_path, "trl-preference")
    assert [(row["pair_id"], row["votes"]) for row in rows] == [(pairs[0].pk, 3), (pairs[1].pk, 3), (pairs[2].pk, 1)]
    assert stats.votes_read == 7


@pytest.mark.parametrize("dataset_format", exports.DATASET_FORMATS)
def test_the_queries_do_not_grow_with_the_rows(tmp_path, voted, make_ranking_pair, django_user_model, dataset_format):
    """Nor with the ranking pairs: their extra answers are read with two queries a chunk of votes, not one a pair."""
    ranker = django_user_model.objects.create_user("ranker")

    def queries_for_export():
        with CaptureQueriesContext(connection) as queries:
            rows, _ = export(tmp_path, dataset_format, rules=PreferenceRules(include_ties=True, include_both_bad=True))
        assert rows
        return len(queries)

    voted("a", "b", "b")
    voted("tie")
    rank_as_annotator(ranker, pair=make_ranking_pair(), ranking=[1, 2, 3, 4])
    few = queries_for_export()
    for _ in range(10):
        voted("a", "both_bad")
        voted("b")
        rank_as_annotator(ranker, pair=make_ranking_pair(count=3), ranking=[2, 1, 2])
    assert queries_for_export() == few <= 5


# Whole rankings (ultrafeedback) have no rows from these votes on pairs of two: test_rankings checks theirs.
@pytest.mark.parametrize("dataset_format", [name for name in exports.DATASET_FORMATS
                                            if not exports.FORMATS[name].whole_rankings])  # fmt: skip
def test_parquet_holds_the_same_rows_as_json_lines_in_batches(tmp_path, voted, monkeypatch, dataset_format):
    monkeypatch.setattr(exports.writers, "PARQUET_BATCH", 2)
    for choices in (("a",), ("b", "b"), ("a", "b", "a"), ("both_bad",), ("tie",)):
        voted(*choices)
    rules = PreferenceRules(include_ties=True, include_both_bad=True)

    json_rows, _ = export(tmp_path, dataset_format, "jsonl", rules=rules)
    parquet_rows, _ = export(tmp_path, dataset_format, "parquet", rules=rules)

    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.equals(exports.FORMATS[dataset_format].schema)
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == -(-len(json_rows) // 2)
    assert parquet_rows == json_rows and json_rows


# The bytes every export wrote before it was made faster (sha256 of the JSON Lines file, with the ids, times and
# judge pseudonyms that differ from run to run numbered in their order of appearance): the same data must give the
# same files. Computed with the implementation of commit f43b65d, before campaigns said what is sampled: the columns
# that came with that (chosen_sampling, rejected_sampling, sampling; test_campaign_sampling checks them) are taken out
# before the sum, so the pins still hold everything else to the old bytes.
PINNED_JSONL = {
    "trl-preference": "60a62b132e2cb1e7263e6e4983829e4a7a1614fd03de8dc153d5cf3b2018ceb2",
    "trl-preference weighted": "6d70bafa52cba5dd6bf1ed47aed4f8d15026e87ebabfdd0d79cf9fbb7cb17d6e",
    "trl-unpaired": "4e566f1743d5c456466b44c427780bca8e465505872462b99eec2400a65feddf",
    "arena": "293956de6e3a49bc09c799ba862e4e2bf077f81e729e4a3aaf03ac1e0dd6f381",
    "hh-rlhf": "88eb3346f6c1cbd01d23e7f0db8dcf027d9e377429587e81ca083606b5bd5c19",
}
_SAMPLING_COLUMNS = re.compile(rb',"(chosen_sampling|rejected_sampling|sampling)":"[^"]*"')
_VARYING = re.compile(rb'"(pair_id|prompt_id|completion_id|question_id|tstamp|judge)":("?)([^,"}]+)')


def _numbered(content):
    """The file with each run-dependent value replaced by its number of appearance (the same value, the same number;
    question ids are pair ids)."""
    seen = {}

    def number(match):
        kind = b"pair_id" if match[1] == b"question_id" else match[1]
        token = seen.setdefault((kind, match[3]), len([key for key in seen if key[0] == kind]))
        return b'"%s":%s%s-%d' % (match[1], match[2], kind, token)

    return _VARYING.sub(number, _SAMPLING_COLUMNS.sub(b"", content))


@pytest.fixture
def fixed_votes(voted, monkeypatch):
    """A small fixed set of votes, cast through the services: every outcome, a system turn and a conversation of
    several turns, non-ASCII text and JSON's special characters, strengths, and an imported vote."""
    voted("a", "b", "a", texts=("Pourquoi pas ? Ça dépend 🙂", 'A "quoted" \\ answer\nwith a newline'), strength=3)
    voted("tie", "tie", "a")
    voted("both_bad", strength=1)
    voted(
        "b",
        "b",
        texts=("short", "longer " * 40),
        strength=1,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "First?"},
            {"role": "assistant", "content": "One."},
            {"role": "user", "content": "And then — 二?"},
        ],
    )
    voted("a", "b")  # a draw: no verdict under majority
    imported = imports.parse_preferences(
        json.dumps({"prompt": "Imported question?", "chosen": "Kept.", "rejected": "Dropped."}), dataset_format="trl"
    )
    monkeypatch.setattr(imports.secrets, "randbits", lambda bits: 1)  # the chosen answer is A (else at random)
    imports.preferences_import(preference_file=imported, dataset_format="trl", file_name="outside.jsonl")


@pytest.mark.parametrize("variant", list(PINNED_JSONL))
def test_exports_write_the_same_bytes_as_before_they_were_made_faster(tmp_path, fixed_votes, monkeypatch, variant):
    _assert_writes_the_pinned_bytes(tmp_path, monkeypatch, variant, PINNED_JSONL[variant])


# The same with rankings among the votes (pairs of four and three answers, ranked by two annotators each, one of them
# "all bad"): what ultrafeedback writes, and the pairs the rankings imply in every other format. Computed with the
# code of commit cf366a3, which read a ranking pair's extra answers with one query per pair; the votes are read
# three at a time here, so that a ranking pair's votes span two chunks.
PINNED_WITH_RANKINGS_JSONL = {
    "trl-preference": "b8b7e4e4895f31fb6e3262949b174942a40af3e2e7c3c39441ffc1565831c402",
    "trl-preference weighted": "566a8e769856afd7cba34c97e616b647f663f9d3fbc357c39431f981a765fce9",
    "trl-unpaired": "e76b587dbe86336463a2fd0f2ea465eeb0f98332570c3fdd0d9ca3edcccca6b6",
    "arena": "892d8fa24d686be52bda19f6abcbb97767af267dccd6e61109d81c12f84291ec",
    "hh-rlhf": "e3c7b0baf2c78f6393ba4fed3a11da5d10c4c9b5fefba62809840f9ad3ec2633",
    "ultrafeedback": "6435263208cb6e2a244eded698aaa0d7893b4ff97b70404dbc92e2f00fe545bb",
}


@pytest.fixture
def fixed_rankings(fixed_votes, make_ranking_pair, ranking_campaign, django_user_model):
    Campaign.objects.filter(pk=ranking_campaign.pk).update(votes_per_pair=2)
    rankers = [django_user_model.objects.create_user(f"ranker{i}") for i in range(2)]
    four = make_ranking_pair(texts=["Réponse A 🙂", 'Answer "B" \\ here', "Answer C\nover two lines", "Answer D"])
    rank_as_annotator(rankers[0], pair=four, ranking=[1, 2, 3, 4])
    rank_as_annotator(rankers[1], pair=four, ranking=[2, 1, 3, 3])
    three = make_ranking_pair(count=3)
    rank_as_annotator(rankers[0], pair=three, ranking=[1, 1, 2])
    rank_as_annotator(rankers[1], pair=three)  # all bad


@pytest.mark.parametrize("variant", list(PINNED_WITH_RANKINGS_JSONL))
def test_exports_with_rankings_write_the_same_bytes_as_before_they_were_made_faster(
    tmp_path, fixed_rankings, monkeypatch, variant
):
    monkeypatch.setattr(exports.stream, "READ_CHUNK", 3)
    _assert_writes_the_pinned_bytes(tmp_path, monkeypatch, variant, PINNED_WITH_RANKINGS_JSONL[variant])


def _assert_writes_the_pinned_bytes(tmp_path, monkeypatch, variant, pinned):
    dataset_format, _, weighted = variant.partition(" ")
    filters = ExportFilters(
        rules=PreferenceRules(include_ties=True, include_both_bad=True), weighting="strength" if weighted else "none"
    )
    paths = {}
    monkeypatch.setattr(exports.writers, "PARQUET_BATCH", 3)  # several row groups
    for file_format in exports.FILE_FORMATS:
        paths[file_format] = tmp_path / f"out.{file_format}"
        exports.export_write(
            dataset_format=dataset_format, file_format=file_format, filters=filters, path=paths[file_format]
        )

    jsonl = paths["jsonl"].read_bytes()
    assert jsonl
    assert hashlib.sha256(_numbered(jsonl)).hexdigest() == pinned, _numbered(jsonl).decode()
    # Parquet: the file pyarrow writes from the same rows, three to a record batch and row group.
    schema = (
        exports.FORMATS[dataset_format].with_weights().schema if weighted else exports.FORMATS[dataset_format].schema
    )
    rows = [json.loads(line) for line in jsonl.splitlines()]
    with pq.ParquetWriter(str(tmp_path / "expected.parquet"), schema) as writer:
        for start in range(0, len(rows), 3):
            writer.write_table(pa.Table.from_pylist(rows[start : start + 3], schema=schema))
    assert paths["parquet"].read_bytes() == (tmp_path / "expected.parquet").read_bytes()


def test_an_empty_export_is_a_valid_empty_file(tmp_path, serving_version):
    assert export(tmp_path, "arena", "parquet")[0] == []
    assert export(tmp_path, "arena", "jsonl")[0] == []


def test_export_run_records_the_export_and_writes_a_card_beside_it(tmp_path, voted, staff, settings):
    settings.EXPORT_DIR = tmp_path / "exports"
    voted("a", strength=1)
    voted("tie")
    filters = ExportFilters(prompt_sets=("default",), license="cc-by-4.0")
    created = exports.export_create(
        created_by=staff, dataset_format="trl-preference", file_format="parquet", filters=filters
    )
    assert (created.status, created.filters["prompt_sets"]) == ("queued", ["default"])
    assert created.filters["license"] == "cc-by-4.0"

    done = exports.export_run(export=created)

    assert (done.status, done.row_count, done.error) == ("done", 1, "")
    data = Path(done.path)
    assert data == settings.EXPORT_DIR / f"export-{done.pk}-trl-preference.parquet" and data.is_file()
    assert exports.export_files(done) == {"data": data, "card": data.with_suffix(".md")}
    card = data.with_suffix(".md").read_text()
    assert card.startswith("---\nlicense: cc-by-4.0\n")
    for expected in (
        "| rows | 1 |",
        "| votes read (after the filters) | 2 |",
        "| left out: no row in this format | none |",
        "| prompt sets | default |",
        "| ties | left out |",
        "| margin | double |",
        "| policy-v0-secret-name | serving | /models/base | - | - | 2 |",
        'load_dataset("parquet", data_files="' + data.name,
        f"by {staff.username}",
        "Tie and both-bad verdicts have no chosen answer",
    ):
        assert expected in card, expected
    assert exports.export_run(export=done).status == "done"  # runs once


def test_a_weighted_trl_preference_export_carries_weights_and_its_card_says_how(tmp_path, voted, staff, settings):
    settings.EXPORT_DIR = tmp_path / "exports"
    much = voted("a", "a", strength=3)
    slightly = voted("b", "a", "b", strength=1)  # the b votes say "slightly"; the a vote is not behind the row
    created = exports.export_create(created_by=staff, dataset_format="trl-preference", file_format="parquet",
                                    filters=ExportFilters(weighting="strength"))  # fmt: skip

    done = exports.export_run(export=created)

    rows = read_rows(Path(done.path))
    assert {row["pair_id"]: row["weight"] for row in rows} == {much.pk: 1.0, slightly.pk: 0.3333}
    card = Path(done.path).with_suffix(".md").read_text()
    for expected in (
        "| weights | strength |",
        "| weight | double |",
        "Weights: strength, as computed, not normalised; min 0.33, max 1.00.",
        "a vote without a strength, such as an imported one, counts as clearly",
    ):
        assert expected in card, expected
    plain, _ = export(tmp_path, "trl-preference")
    assert plain and all("weight" not in row for row in plain)


def test_a_failed_export_is_recorded_and_leaves_no_partial_file(tmp_path, voted, staff):
    voted("a")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    created = exports.export_create(
        created_by=staff, dataset_format="arena", file_format="jsonl", filters=ExportFilters()
    )
    failed = exports.export_run(export=created, path=blocker / "out.jsonl")
    assert failed.status == "failed" and "FileExistsError" in failed.error and failed.finished_at
    assert exports.export_files(failed) == {}


def test_invalid_exports_name_the_fields_and_record_nothing(voted):
    voted("a", "b", "a")
    filters = ExportFilters(
        model_versions=("nope",), annotators=("ghost", "voter0"), prompt_sets=("missing",), sources=("robots",)
    )
    with pytest.raises(Invalid) as raised:
        exports.export_create(created_by=None, dataset_format="csv", file_format="xlsx", filters=filters)
    assert raised.value.errors == {
        "dataset_format": "must be one of trl-preference, trl-unpaired, arena, hh-rlhf, ultrafeedback",
        "file_format": "must be one of jsonl, parquet",
        "model_versions": "unknown: nope",
        "annotators": "unknown: ghost",
        "prompt_sets": "unknown: missing",
        "sources": "unknown: robots (use human, simulated, imported, judge)",
    }
    with pytest.raises(Invalid) as raised:
        exports.export_create(
            created_by=None, dataset_format="arena", file_format="jsonl", filters=ExportFilters(date_to=date.max)
        )
    assert raised.value.errors == {"date_to": "9999-12-31 is too near the end of the calendar: use a real date"}
    assert not Export.objects.exists()


def test_export_run_records_the_votes_read_while_it_runs(tmp_path, voted, monkeypatch):
    monkeypatch.setattr(exports.stream, "READ_CHUNK", 2)
    monkeypatch.setattr(exports.services, "PROGRESS_INTERVAL", 0)
    for _ in range(3):
        voted("a", "b", "b")
    created = exports.export_create(
        created_by=None, dataset_format="arena", file_format="jsonl", filters=ExportFilters()
    )
    seen = []  # what a poll of the Export would have shown after each chunk

    def poll(done):
        seen.append(Export.objects.values_list("status", "votes_read", "votes_total").get(pk=created.pk))

    done = exports.export_run(export=created, path=tmp_path / "out.jsonl", on_progress=poll)

    assert seen == [("running", 2, 9), ("running", 4, 9), ("running", 6, 9), ("running", 8, 9), ("running", 9, 9)]
    assert (done.status, done.votes_read, done.votes_total, done.progress_percent) == ("done", 9, 9, 100)


def test_export_command_writes_data_and_card_and_records_it(tmp_path, voted, capsys):
    voted("a")
    voted("b", "b")
    output = tmp_path / "prefs.parquet"

    call_command("export_preferences", "--format", "trl-preference", "--output", str(output), "--combine", "all")

    printed = capsys.readouterr().out
    export_row = Export.objects.get()
    assert f"export {export_row.pk}: 3 rows in {output}" in printed
    assert (export_row.file_format, export_row.created_by, export_row.filters["combine"]) == ("parquet", None, "all")
    assert len(pq.read_table(output)) == 3 and (tmp_path / "prefs.md").is_file()
    with pytest.raises(CommandError, match="model_versions: unknown: nope"):
        call_command("export_preferences", "--format", "arena", "--model-version", "nope")
    with pytest.raises(CommandError, match="date_to: 9999-12-31 is too near the end of the calendar"):
        call_command("export_preferences", "--format", "arena", "--until", "9999-12-31")
    assert Export.objects.count() == 1
    with pytest.raises(CommandError, match=r"must end with \.jsonl or \.parquet"):
        call_command("export_preferences", "--format", "arena", "--output", str(tmp_path / "x.csv"))


def test_hh_rlhf_round_trip_exports_arena_and_parquet(tmp_path):
    call_command("import_preferences", str(HH_RLHF), "--format", "hh-rlhf", "--skip-bad", verbosity=0)

    call_command("export_preferences", "--format", "arena", "--output", str(tmp_path / "arena.jsonl"), verbosity=0)
    arena = read_rows(tmp_path / "arena.jsonl")
    assert len(arena) == 997
    for row in arena:
        ARENA_ROW.validate(row)
    assert {row["judge"] for row in arena} == {arena[0]["judge"]}  # one file: one pseudonym

    output = tmp_path / "hh.parquet"
    call_command("export_preferences", "--format", "hh-rlhf", "--output", str(output), verbosity=0)
    table = pq.read_table(output)
    assert table.num_rows == 997 and table.column_names[:2] == ["chosen", "rejected"]
    originals = {
        json.dumps(pair["prompt"]): pair["chosen"][0]["content"]
        for pair in (_maybe_pair(line) for line in HH_RLHF.read_text().splitlines())
        if pair
    }
    for row in table.slice(0, 100).to_pylist():
        back = hh_rlhf_to_trl(row)
        assert originals[json.dumps(back["prompt"])] == back["chosen"][0]["content"]


def _maybe_pair(line):
    try:
        return hh_rlhf_to_trl(json.loads(line))
    except ValueError:
        return None


@pytest.mark.slow
def test_hh_rlhf_export_trains_one_dpo_step_with_no_glue(tmp_path):
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from training.model_prep import prepare_model

    call_command("import_preferences", str(HH_RLHF), "--format", "hh-rlhf", "--skip-bad", verbosity=0)
    output = tmp_path / "train.jsonl"
    call_command("export_preferences", "--format", "trl-preference", "--output", str(output), verbosity=0)

    dataset = load_dataset("json", data_files=str(output), split="train")
    assert dataset.num_rows == 997
    # Four rows whose prompts leave room for an answer within max_length=64 (TRL drops the others).
    sizes = [sum(len(message["content"]) for message in prompt) for prompt in dataset["prompt"]]
    shortest = sorted(range(len(sizes)), key=sizes.__getitem__)[:4]
    model_dir = prepare_model(None, BASE_MODEL_DIR)
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=DPOConfig(
            output_dir=str(tmp_path / "dpo"),
            max_length=64,
            per_device_train_batch_size=2,
            max_steps=1,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            bf16=False,
            dataloader_pin_memory=False,
        ),
        train_dataset=dataset.select(shortest),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    # One thread: on a busy two-core machine, two threads fighting other processes made this step 20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = trainer.train()
    finally:
        torch.set_num_threads(threads)
    assert result.global_step == 1 and result.training_loss > 0


def test_the_card_front_matter_is_yaml_that_keeps_a_hostile_licence_as_one_value(tmp_path, voted, staff, settings):
    settings.EXPORT_DIR = tmp_path
    voted("a")
    licence = 'cc-by-4.0\ntags: [hijacked]\n# "quoted": yes | no'
    created = exports.export_create(
        created_by=staff, dataset_format="arena", file_format="jsonl", filters=ExportFilters(license=licence)
    )
    card = exports.card_path(Path(exports.export_run(export=created).path)).read_text()

    front_text = card.split("---\n")[1]
    front = yaml.safe_load(front_text)
    assert front == {
        "license": licence,
        "pretty_name": f"pairloop export {created.pk}: arena",
        "tags": ["pairloop", "preference", "human-feedback", "arena"],
    }
    assert exports.card_read(card)[0] == front
    assert exports.card_read(card)[1].lstrip().startswith(f"# pairloop export {created.pk}: arena")
    assert "| rows | 1 |" in card


def test_card_read_takes_a_card_without_front_matter_as_body():
    assert exports.card_read("# Title\n\ntext\n") == ({}, "# Title\n\ntext\n")
    assert exports.card_read("---\n- a list\n---\nbody") == ({}, "body")


def test_sampling_labels_say_each_answers_settings_whatever_was_labelled_before():
    """Labels are remembered by settings: settings equal in Python but written differently keep their own label."""
    from annotate.data.exports.formats import sampling_label

    settings_and_labels = [
        ({"temperature": 1.0, "top_p": 0.95, "max_tokens": 256}, "temperature 1.0, top_p 0.95, max_tokens 256"),
        ({"temperature": 1, "top_p": 0.95, "max_tokens": 256, "seed": 2}, "temperature 1, top_p 0.95, max_tokens 256"),
        ({"temperature": True, "top_p": 0.95, "max_tokens": 256}, "temperature True, top_p 0.95, max_tokens 256"),
        ({"temperature": 0.0}, "temperature 0.0"),
        ({"temperature": -0.0}, "temperature -0.0"),
        ({"temperature": 0.7, "system_prompt": "Be brief."}, "temperature 0.7, system prompt 213c22ed7234"),
        ({"temperature": 0.7, "system_prompt": "Be long."}, "temperature 0.7, system prompt fd09b35b60f5"),
        ({"temperature": 0.7, "top_p": [1]}, "temperature 0.7, top_p [1]"),
        ({}, "not recorded"),
    ]  # fmt: skip
    for _ in range(2):
        assert [sampling_label(given) for given, _ in settings_and_labels] == [
            label for _, label in settings_and_labels
        ]
