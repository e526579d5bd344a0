"""The judge rule (out / weight / in): one spec for rounds, exports (form and API) and the dataset card; rules stored
before the weight existed still read."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from annotate.data.exports import ExportFilters
from annotate.models import Export, Judgement, TrainingRound
from annotate.quality.judge_rule import judge_rule_errors
from annotate.quality.preferences import PairWeights, PreferenceRules
from annotate.rounds import services as rounds

from .test_judging import pairs, settled, stand_in  # noqa: F401 (fixtures)

# Every test below the pure ones starts from `settled` (test_judging): 4 gold, 4 people-voted, 3 judge-settled pairs.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("stored", "rule"),
    [
        ({"combine": "majority", "include_judge": True}, ("in", 0.5)),
        ({"combine": "majority", "include_judge": False}, ("out", 0.5)),
        ({"combine": "majority"}, ("out", 0.5)),  # stored before the judge existed
        ({"combine": "all", "judge": "weight", "judge_weight": 0.25}, ("weight", 0.25)),
    ],
)
def test_stored_rules_of_old_rounds_and_exports_still_read(stored, rule):
    rules = PreferenceRules.from_dict(stored)
    assert (rules.judge, rules.judge_weight) == rule
    assert ExportFilters.from_dict(stored).rules == rules
    assert PreferenceRules.from_dict(rules.as_dict()) == rules


@pytest.mark.parametrize(
    ("rule", "weight", "errors"),
    [
        ("out", 0.5, {}),
        ("weight", 1.0, {}),
        ("weight", 0.0, {"judge_weight": "must be above 0 and at most 1, not 0"}),
        ("weight", 1.5, {"judge_weight": "must be above 0 and at most 1, not 1.5"}),
        ("sometimes", 0.5, {"judge": "must be one of out, weight, in, not 'sometimes'"}),
    ],
)
def test_one_spec_checks_the_rule_everywhere(rule, weight, errors):
    assert judge_rule_errors(rule, weight) == errors
    if errors:
        with pytest.raises(ValueError, match="judge rule"):
            PreferenceRules(judge=rule, judge_weight=weight)  # type: ignore[arg-type]


def test_a_judge_vote_weighs_the_judge_weight_and_a_persons_one():
    weights = PairWeights("none", {}, judge_weight=0.25)
    judge = Judgement(choice="a", source=Judgement.Source.JUDGE)
    person = Judgement(choice="a", source=Judgement.Source.HUMAN, annotator_id=1)
    assert weights.weight("a", [judge]) == 0.25
    assert weights.weight("a", [person]) == 1.0
    assert weights.weight("a", [judge, person]) == pytest.approx(0.625)  # the mean of the winning votes' factors
    strength = PairWeights("strength", {}, judge_weight=0.5)
    assert strength.weight("a", [Judgement(choice="a", source="judge", strength=3)]) == 0.5


@pytest.mark.parametrize(("rule", "train_rows"), [("out", 4), ("in", 7), ("weight", 7)])
@pytest.mark.usefixtures("settled")
def test_rounds_leave_out_include_or_weigh_judge_votes_by_the_setting(settings, tmp_path, rule, train_rows):
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ROUND_MIN_TRAIN_PAIRS = 4
    settings.ROUND_HOLDOUT_FRACTION = 0.0
    settings.ROUND_JUDGE, settings.ROUND_JUDGE_WEIGHT = rule, 0.5
    training_round = rounds.round_start(trigger="api")
    assert training_round.rules["judge"] == rule and training_round.rules["judge_weight"] == 0.5
    train_path, _ = rounds.round_prepare(training_round)
    rows = [json.loads(line) for line in train_path.read_text().splitlines()]
    assert len(rows) == train_rows
    training_round.refresh_from_db()
    judged = "votes of the AI judge" in training_round.votes_left_out
    assert judged == (rule == "out")
    if rule == "weight":
        # Normalised to mean 1 with a judge row at half a person's: 4 people's rows w, 3 judge rows w/2, mean 1.
        weights = sorted(row["weight"] for row in rows)
        assert weights[:3] == [pytest.approx(weights[-1] / 2, abs=1e-5)] * 3
        assert sum(weights) / len(weights) == pytest.approx(1.0, abs=1e-5)
        assert "AI judge's votes 0.5" in training_round.weighting_basis
    else:
        assert all("weight" not in row for row in rows)


@pytest.mark.usefixtures("settled")
def test_a_round_stored_with_the_old_include_judge_reads_it(settings, tmp_path, client, staff):
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ROUND_MIN_TRAIN_PAIRS = 4
    settings.ROUND_HOLDOUT_FRACTION = 0.0
    training_round = rounds.round_start(trigger="api")
    old = {name: value for name, value in training_round.rules.items() if not name.startswith("judge")}
    TrainingRound.objects.filter(pk=training_round.pk).update(rules={**old, "include_judge": True})
    training_round.refresh_from_db()
    train_path, _ = rounds.round_prepare(training_round)
    assert len(train_path.read_text().splitlines()) == 7
    client.force_login(staff)
    page = client.get(f"/rounds/{training_round.pk}/").content.decode()
    assert '<span data-testid="judge-rule">included like people&#x27;s votes</span>' in page


@pytest.mark.usefixtures("settled")
def test_the_export_api_takes_the_rule_and_refuses_what_cannot_be(staff, settings, tmp_path):
    settings.EXPORT_DIR = tmp_path
    client = APIClient()
    client.force_authenticate(staff)
    refused = [
        ({"judge": "maybe"}, "judge"),
        ({"judge": "weight", "judge_weight": 0}, "judge_weight"),
        ({"judge": "weight", "judge_weight": 2}, "judge_weight"),
        ({"judge": "weight", "judge_weight": "heavy"}, "judge_weight"),
        ({"judge": "weight", "dataset_format": "arena"}, "judge"),  # only trl-preference rows carry a weight
    ]
    for body, field in refused:
        response = client.post("/api/exports/", {"dataset_format": "trl-preference", **body}, format="json")
        assert response.status_code == 400, (body, response.content)
        assert field in response.json()["errors"], response.json()
    assert not Export.objects.exists()
    response = client.post(
        "/api/exports/", {"dataset_format": "trl-preference", "judge": "weight", "judge_weight": 0.25}, format="json"
    )
    assert response.status_code in (201, 202), response.content
    export = Export.objects.get()
    assert export.filters["judge"] == "weight" and export.filters["judge_weight"] == 0.25


@pytest.mark.usefixtures("settled")
def test_the_export_form_takes_the_rule_without_javascript(client, staff, settings, tmp_path):
    settings.EXPORT_DIR = tmp_path
    client.force_login(staff)
    form = {"dataset_format": "trl-preference", "file_format": "jsonl", "combine": "majority", "min_agreement": "0"}
    page = client.get("/data/exports/").content.decode()
    assert 'name="judge"' in page and 'name="judge_weight"' in page
    for bad in (
        {"judge": "weight", "judge_weight": "0"},
        {"judge": "always"},
        {"judge": "weight", "dataset_format": "arena"},
    ):
        response = client.post("/data/exports/", {**form, **bad})
        assert response.status_code == 400, bad
    assert not Export.objects.exists()
    response = client.post("/data/exports/", {**form, "judge": "weight", "judge_weight": "0.3"})
    assert response.status_code == 303
    assert Export.objects.get().filters["judge"] == "weight"
    assert Export.objects.get().filters["judge_weight"] == 0.3
