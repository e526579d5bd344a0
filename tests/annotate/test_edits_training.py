"""Written answers in training rounds (PreferenceRules.edits): each trains as the chosen answer against both sampled
answers of its pair, beside the votes' choices or instead of them; staff's rejection keeps it out. Votes and their
answers are cast through the annotation services, as the annotate page casts them."""

import json

import pytest

from annotate.annotation import edits
from annotate.models import Campaign, HumanAnswer
from annotate.rounds import services as rounds
from tests.annotate.voting import vote_with_edit

pytestmark = pytest.mark.django_db


def better_for_the_first_three(pair):
    number = int(pair.completion_a.text.split()[-1])
    return f"better {number}" if number < 3 else ""


@pytest.fixture
def written(settings, tmp_path, make_pair, annotator):
    """Six pairs, all voted A by the annotator; on the first three they also wrote a better answer ("better N")."""
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ROUND_MIN_TRAIN_PAIRS = 1
    settings.ROUND_HOLDOUT_FRACTION = 0.0
    for number in range(6):
        make_pair(texts=(f"short {number}", f"a much longer answer {number}"))
    Campaign.objects.filter(name="default").update(edits_allowed=True)
    for _ in range(6):
        vote_with_edit(annotator, better_for_the_first_three)
    assert HumanAnswer.objects.count() == 3
    return settings


def prepared_rows():
    training_round = rounds.round_start(trigger="api")
    train_path, heldout_path = rounds.round_prepare(training_round)
    training_round.refresh_from_db()
    rows = [json.loads(line) for line in train_path.read_text().splitlines()]
    pairs = sorted((row["chosen"][0]["content"], row["rejected"][0]["content"]) for row in rows)
    return training_round, pairs, heldout_path


EDIT_ROWS = sorted(
    pair
    for number in range(3)
    for pair in ((f"better {number}", f"short {number}"), (f"better {number}", f"a much longer answer {number}"))
)
CHOICE_ROWS = sorted((f"short {number}", f"a much longer answer {number}") for number in range(6))


def test_by_default_written_answers_train_beside_the_choices(written):
    training_round, pairs, _ = prepared_rows()
    assert training_round.rules["edits"] == "edits_and_choices"
    assert pairs == sorted(EDIT_ROWS + CHOICE_ROWS)
    assert (training_round.edits_used, training_round.train_pairs) == (3, 12)


@pytest.mark.parametrize(("rule", "expected", "used"), [("edits_only", EDIT_ROWS, 3), ("off", CHOICE_ROWS, 0)])
def test_edits_only_leaves_the_choices_out_and_off_leaves_the_edits_out(written, rule, expected, used):
    written.ROUND_EDITS = rule
    training_round, pairs, _ = prepared_rows()
    assert training_round.rules["edits"] == rule
    assert pairs == expected and training_round.edits_used == used


def test_a_rejected_written_answer_does_not_train(written, staff):
    answer = HumanAnswer.objects.get(text="better 1")
    edits.human_answer_review(human_answer=answer, by=staff, reject=True, reason="made up")
    written.ROUND_EDITS = "edits_only"
    training_round, pairs, _ = prepared_rows()
    assert pairs == [row for row in EDIT_ROWS if row[0] != "better 1"] and training_round.edits_used == 2


def test_written_answers_on_held_out_prompts_are_in_neither_file(written):
    written.ROUND_HOLDOUT_FRACTION = 1.0  # every prompt is held out
    written.ROUND_MIN_TRAIN_PAIRS = 0
    training_round, pairs, heldout_path = prepared_rows()
    heldout = heldout_path.read_text()
    assert pairs == [] and "better" not in heldout and heldout.count("\n") == 6
    assert training_round.edits_used == 0


def test_the_round_page_says_how_many_written_answers_it_used(written, client, staff):
    training_round, _, _ = prepared_rows()
    client.force_login(staff)
    page = client.get(f"/rounds/{training_round.pk}/").content.decode()
    assert 'data-testid="edits-used">3 used (rule: written answers and choices)' in page


def test_edit_weights_count_as_one_strongest_vote_by_the_author(written):
    written.ROUND_HOLDOUT_FRACTION = 0.0
    training_round = rounds.round_start(trigger="api", overrides={"weighting": "strength"})
    train_path, _ = rounds.round_prepare(training_round)
    rows = [json.loads(line) for line in train_path.read_text().splitlines()]
    # Choices: strength 2 of 3; written answers: 3 of 3. Normalised to mean 1 over 6 + 6 rows.
    mean = (6 * 2 / 3 + 6 * 1) / 12
    by_kind = {row["chosen"][0]["content"].startswith("better"): row["weight"] for row in rows}
    assert by_kind == pytest.approx({True: round(1 / mean, 6), False: round(2 / 3 / mean, 6)})
