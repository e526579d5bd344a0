"""Written answers in exports and on the dataset card (annotate/data/exports/edits.py), under the same rule as
rounds (PreferenceRules.edits). Votes and their answers are cast through the annotation services."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from annotate.annotation import edits
from annotate.data import exports
from annotate.data.exports.filters import ExportFilters
from annotate.models import Campaign, HumanAnswer
from annotate.quality.preferences import PreferenceRules
from tests.annotate.voting import vote_with_edit

pytestmark = pytest.mark.django_db


@pytest.fixture
def written(make_pair, annotator):
    """Two pairs voted A by the annotator; on the first they also rewrote A."""
    first = make_pair(texts=("short 0", "long answer 0"))
    make_pair(texts=("short 1", "long answer 1"))
    Campaign.objects.filter(name="default").update(edits_allowed=True)
    for _ in range(2):
        vote_with_edit(annotator, lambda pair: "short 0, written better" if pair == first else "", strength=1)
    return first


def export(tmp_path, dataset_format="trl-preference", file_format="jsonl", **filters):
    path = tmp_path / f"out.{file_format}"
    stats = exports.export_write(
        dataset_format=dataset_format, file_format=file_format, filters=ExportFilters(**filters), path=path
    )
    rows = pq.read_table(path).to_pylist() if file_format == "parquet" else [json.loads(line) for line in path.open()]
    return rows, stats


def chosen_rejected(rows):
    return sorted((row["chosen"][0]["content"], row["rejected"][0]["content"]) for row in rows)


def test_a_written_answer_is_chosen_over_both_sampled_answers_beside_the_votes(tmp_path, written, serving_version):
    rows, stats = export(tmp_path)
    assert chosen_rejected(rows) == [
        ("short 0", "long answer 0"),
        ("short 0, written better", "long answer 0"),
        ("short 0, written better", "short 0"),
        ("short 1", "long answer 1"),
    ]
    row = next(row for row in rows if row["rejected"][0]["content"] == "short 0")
    assert row["chosen_model"] == "human-edit" and row["rejected_model"] == serving_version.name
    assert (row["on_policy"], row["votes"], row["agreement"], row["margin"]) == (False, 1, 1.0, 1.0)
    assert row["prompt"] == written.prompt.messages and row["pair_id"] == written.pk
    assert (stats.rows, stats.edits, stats.edit_rows) == (4, 1, 2)


@pytest.mark.parametrize(("rule", "expected"), [("edits_only", 2), ("off", 2)])
def test_the_rule_leaves_choices_or_edits_out(tmp_path, written, rule, expected):
    rows, _ = export(tmp_path, rules=PreferenceRules(edits=rule))
    written_rows = [row for row in rows if row["chosen_model"] == "human-edit"]
    assert len(rows) == expected
    assert len(written_rows) == (2 if rule == "edits_only" else 0)


def test_rejected_written_answers_and_other_formats_hold_none(tmp_path, written, staff):
    rows, _ = export(tmp_path, dataset_format="trl-unpaired")
    assert all("written better" not in row["completion"][0]["content"] for row in rows)
    edits.human_answer_review(human_answer=HumanAnswer.objects.get(), by=staff, reject=True, reason="off topic")
    rows, stats = export(tmp_path)
    assert len(rows) == 2 and stats.edits == 0


def test_weighted_parquet_export_loads_with_datasets_and_the_card_says_how_many_rows_are_written(
    tmp_path, written, staff, settings
):
    settings.EXPORT_DIR = tmp_path / "exports"
    created = exports.export_create(
        created_by=staff,
        dataset_format="trl-preference",
        file_format="parquet",
        filters=ExportFilters(weighting="strength"),
    )
    done = exports.export_run(export=created)
    assert (done.status, done.row_count) == ("done", 4)
    dataset = load_dataset("parquet", data_files=done.path, split="train")
    weights = {row["chosen"][0]["content"]: row["weight"] for row in dataset}
    assert weights == {"short 0": 0.3333, "short 1": 0.3333, "short 0, written better": 1.0}
    card = Path(done.path).with_suffix(".md").read_text()
    for expected in (
        "| rows from written answers | 2 (from 1 answers annotators wrote) |",
        "| written answers (rule edits) | included beside the votes' choices |",
        "`chosen_model` and `chosen_sampling` say `human-edit`",
    ):
        assert expected in card, expected


def test_the_export_api_and_form_take_the_rule_and_refuse_a_bad_one(client, staff, written):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(staff)
    bad = api.post("/api/exports/", {"dataset_format": "trl-preference", "edits": "some"}, format="json")
    assert bad.status_code == 400 and "edits" in bad.json()["errors"]
    good = api.post("/api/exports/", {"dataset_format": "trl-preference", "edits": "edits_only"}, format="json")
    assert good.status_code in (201, 202), good.content
    assert good.json()["filters"]["edits"] == "edits_only"
