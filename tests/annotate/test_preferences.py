import pytest

from annotate.models import Judgement
from annotate.quality.preferences import PreferenceRules, judgements_for_preferences, trl_preference_row, verdicts
from tests.annotate.voting import vote_as_annotator

pytestmark = pytest.mark.django_db


@pytest.fixture
def voted(make_pair, django_user_model):
    """Make a pair with the given votes (a, b, tie, both_bad), each from its own annotator, cast through the
    annotation services."""
    users = iter(django_user_model.objects.create_user(f"voter{i}") for i in range(100))

    def make(*choices, texts=("answer A", "answer B")):
        pair = make_pair(texts=texts, required=len(choices))
        for choice in choices:
            vote_as_annotator(next(users), pair=pair, choice=choice, strength=2, source=Judgement.Source.SIMULATED)
        return pair

    return make


def outcomes(rules=None):
    rules = rules or PreferenceRules()
    return [(v.pair.pk, v.outcome, round(v.agreement, 2)) for v in verdicts(judgements_for_preferences(), rules)]


def test_majority_gives_one_row_per_pair_and_skips_draws(voted):
    clear = voted("a", "a", "b")
    voted("a", "b")  # a draw says nothing
    single = voted("b")
    assert outcomes() == [(clear.pk, "a", 0.67), (single.pk, "b", 1.0)]


def test_ties_and_both_bad_are_left_out_unless_asked_for(voted):
    tie, both_bad = voted("tie"), voted("both_bad", "both_bad", "a")
    assert outcomes() == []
    rules = PreferenceRules(include_ties=True, include_both_bad=True)
    assert outcomes(rules) == [(tie.pk, "tie", 1.0), (both_bad.pk, "both_bad", 0.67)]


def test_unanimous_keeps_only_pairs_whose_votes_agree(voted):
    agreed, _split = voted("b", "b"), voted("a", "a", "b")
    assert outcomes(PreferenceRules(combine="unanimous")) == [(agreed.pk, "b", 1.0)]


def test_all_gives_one_row_per_vote(voted):
    pair = voted("a", "a", "b")
    expected = [(pair.pk, "a", 0.67), (pair.pk, "a", 0.67), (pair.pk, "b", 0.33)]
    assert outcomes(PreferenceRules(combine="all")) == expected


def test_min_agreement_filters_contested_pairs(voted):
    voted("a", "a", "b")
    sure = voted("b", "b")
    assert outcomes(PreferenceRules(min_agreement=0.75)) == [(sure.pk, "b", 1.0)]


def test_trl_row_puts_the_winner_as_chosen(voted):
    voted("b", texts=("loser", "winner"))
    (verdict,) = verdicts(judgements_for_preferences(), PreferenceRules())
    row = trl_preference_row(verdict)
    assert row == {
        "prompt": [{"role": "user", "content": "Question number 1?"}],
        "chosen": [{"role": "assistant", "content": "winner"}],
        "rejected": [{"role": "assistant", "content": "loser"}],
    }


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="combine"):
        PreferenceRules(combine="mean")
    with pytest.raises(ValueError, match="min_agreement"):
        PreferenceRules(min_agreement=2)


def test_weights_count_a_vote_without_strength_or_competence_as_the_middle():
    from typing import NamedTuple

    from annotate.quality.preferences import PairWeights

    class Vote(NamedTuple):
        choice: str
        strength: int | None
        annotator_id: int | None

    competence = {1: 0.9, 2: 0.5}  # MACE estimated these two; their mean, 0.7, stands for anyone else
    imported = Vote("a", None, None)
    weigh = PairWeights("strength+competence", competence)

    assert weigh.weight("a", [imported]) == pytest.approx(2 / 3 * 0.7)
    assert weigh.weight("a", [Vote("a", 3, 1), Vote("b", 1, 2), imported]) == pytest.approx((3 + 2) / 2 / 3 * 0.8)
    assert PairWeights("strength", {}).weight("b", [Vote("b", 1, 7)]) == pytest.approx(1 / 3)
    assert PairWeights("competence", {}).weight("b", [Vote("b", 1, 7)]) == 1.0  # no estimate at all: 1
    assert PairWeights("none", competence).weight("a", [Vote("a", 1, 2)]) == 1.0
