"""From votes to preference data: how several votes on one pair are combined, and what is left out.

Training rounds and exports read preference data through here, so both follow the same rules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations, groupby
from operator import itemgetter
from typing import Any, Generic, Literal, Protocol, TypeVar

from django.db.models import Count, F, Q, QuerySet

from annotate.annotation import rankings
from annotate.models import Completion, HumanAnswer, Judgement, Pair
from annotate.quality.judge_rule import JUDGE_WEIGHT_DEFAULT, JudgeRule, judge_rule_errors, judge_rule_stored

Combine = Literal["majority", "all", "unanimous"]
# What annotators' written answers (HumanAnswer) add: nothing; only their rows (the votes' own choices are left
# out); or their rows beside the choices.
Edits = Literal["off", "edits_only", "edits_and_choices"]
EDITS_RULES = ("off", "edits_only", "edits_and_choices")
DECISIVE = (Judgement.Choice.A, Judgement.Choice.B)


@dataclass(frozen=True)
class PreferenceRules:
    """majority: one row per pair, the most common vote (a draw between A and B gives no row);
    all: one row per vote; unanimous: one row per pair whose votes all agree.

    Which votes count at all: votes on gold pairs (they test annotators), repeat votes (they test self-consistency)
    and the votes of annotators staff excluded are left out unless included. Votes on head-to-head pairs (two model
    versions' answers: the canary's and the leaderboard's) count like any other unless excluded: they are human
    preferences too, but off-policy for the version being trained."""

    combine: Combine = "majority"
    include_ties: bool = False
    include_both_bad: bool = False
    min_agreement: float = 0.0
    include_gold: bool = False
    include_repeats: bool = False
    include_excluded_annotators: bool = False
    exclude_head_to_head: bool = False
    # Leave out annotators whose MACE competence (agreement.competence, over the votes being read) is lower;
    # 0 keeps everyone.
    min_competence: float = 0.0
    # Written answers train as the chosen answer against both sampled answers of their pair (edit_preference_rows);
    # by default beside the choices: a vote with an answer written is still a vote between the two.
    edits: Edits = "edits_and_choices"
    # The AI judge's votes (Judgement.Source.JUDGE, pairs it settled alone): out, weight or in (judge_rule.py);
    # judge_weight is each judge vote's weight under "weight" (PairWeights).
    judge: JudgeRule = "out"
    judge_weight: float = JUDGE_WEIGHT_DEFAULT

    def __post_init__(self) -> None:
        if self.edits not in EDITS_RULES:
            raise ValueError(f"edits must be one of {', '.join(EDITS_RULES)}, not {self.edits!r}")
        if self.combine not in ("majority", "all", "unanimous"):
            raise ValueError(f"combine must be majority, all or unanimous, not {self.combine!r}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError("min_agreement must be between 0 and 1")
        if not 0.0 <= self.min_competence <= 1.0:
            raise ValueError("min_competence must be between 0 and 1")
        for problem in judge_rule_errors(self.judge, self.judge_weight).values():
            raise ValueError(f"judge rule: {problem}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreferenceRules:
        """Rules as stored (as_dict), also those stored before a field existed: a missing field takes its default,
        and the old include_judge (true/false) reads as the judge rule in/out."""
        judge, judge_weight = judge_rule_stored(data)
        known = {name: value for name, value in data.items() if name in cls.__dataclass_fields__}
        return cls(**{**known, "judge": judge, "judge_weight": judge_weight})

    def as_dict(self) -> dict[str, Any]:
        return {
            "combine": self.combine,
            "include_ties": self.include_ties,
            "include_both_bad": self.include_both_bad,
            "min_agreement": self.min_agreement,
            "include_gold": self.include_gold,
            "include_repeats": self.include_repeats,
            "include_excluded_annotators": self.include_excluded_annotators,
            "exclude_head_to_head": self.exclude_head_to_head,
            "min_competence": self.min_competence,
            "edits": self.edits,
            "judge": self.judge,
            "judge_weight": self.judge_weight,
        }

    @property
    def judge_weighted(self) -> bool:
        """Whether judge votes count with their own weight (so training rows need a weight column)."""
        return self.judge == "weight"

    @property
    def choices_train(self) -> bool:
        return self.edits != "edits_only"

    @property
    def edits_train(self) -> bool:
        return self.edits != "off"

    def left_out_conditions(
        self, judgements: QuerySet[Judgement], competence: Mapping[int, float] | None = None
    ) -> dict[str, Q]:
        """Each kind of vote these rules leave out, by the reason a page or a dataset card gives. With a minimum
        competence this estimates every annotator's competence (MACE) unless given it (annotator_competence of the
        same votes): compute the conditions once and pass them on."""
        reasons = {}
        if self.min_competence > 0:
            scores = annotator_competence(judgements) if competence is None else competence
            low = [annotator for annotator, score in scores.items() if score < self.min_competence]
            reasons[f"votes of annotators with competence below {self.min_competence:g}"] = Q(annotator_id__in=low)
        if not self.include_gold:
            reasons["votes on gold pairs"] = ~Q(pair__gold_choice="")
        if not self.include_repeats:
            reasons["repeat votes (self-consistency checks)"] = Q(is_repeat=True)
        if not self.include_excluded_annotators:
            reasons["votes of excluded annotators"] = Q(annotator__standing__votes_excluded=True)
        if self.judge == "out":
            reasons["votes of the AI judge"] = Q(source=Judgement.Source.JUDGE)
        if self.exclude_head_to_head:
            same_version = F("pair__completion_b__model_version_id")
            reasons["votes on head-to-head pairs (two model versions)"] = ~Q(
                pair__completion_a__model_version_id=same_version
            )
        return reasons

    def left_out_and_competence(
        self, judgements: QuerySet[Judgement], weighting: str = "none"
    ) -> tuple[dict[str, Q], dict[int, float]]:
        """left_out_conditions, and the annotators' MACE competence when the rules or the weighting need it (else
        empty): MACE runs at most once, for both. What rounds and exports call."""
        needs_competence = self.min_competence > 0 or "competence" in weighting
        competence = annotator_competence(judgements) if needs_competence else {}
        return self.left_out_conditions(judgements, competence if needs_competence else None), competence

    def counted(self, judgements: QuerySet[Judgement], conditions: dict[str, Q] | None = None) -> QuerySet[Judgement]:
        """The votes these rules let in, before they are combined."""
        for condition in (self.left_out_conditions(judgements) if conditions is None else conditions).values():
            judgements = judgements.exclude(condition)
        return judgements

    def left_out(self, judgements: QuerySet[Judgement], conditions: dict[str, Q] | None = None) -> dict[str, int]:
        """How many of `judgements` each rule leaves out (a vote may be left out for several reasons)."""
        reasons = self.left_out_conditions(judgements) if conditions is None else conditions
        counts = judgements.aggregate(
            **{f"n{index}": Count("id", filter=q) for index, q in enumerate(reasons.values())}
        )
        return {reason: counts[f"n{index}"] for index, reason in enumerate(reasons)}


def annotator_competence(judgements: QuerySet[Judgement]) -> dict[int, float]:
    """Each annotator's MACE competence, estimated from these votes (gold and repeats aside)."""
    from annotate.quality.agreement import competence
    from annotate.quality.selectors import votes_from_judgements

    votes = votes_from_judgements(judgements.filter(is_repeat=False, pair__gold_choice=""))
    return {int(str(annotator)): score for annotator, score in competence(votes).items()}


@dataclass(frozen=True)
class Verdict:
    """What the votes on one pair say, under the rules."""

    pair: Pair
    outcome: str  # a, b, tie or both_bad
    votes: int  # all votes on the pair
    agreement: float  # share of the votes that agree with the outcome
    strength: float | None  # mean strength of the votes for the outcome (a or b only)
    judgement_ids: list[int] = field(default_factory=list)
    # The same votes as judgement_ids, for their lineage and weights (for a pair implied by rankings, each ranking's
    # RankedVote: what it says of the two answers compared).
    judgements: Sequence[Any] = field(default_factory=list)
    # A pair implied by rankings (ranking_verdicts): the two answers it compares, first and second standing for A and
    # B in `outcome`, and its share of its rankings' weight (annotate/annotation/rankings.py).
    compared: tuple[Completion, Completion] | None = None
    share: float = 1.0

    def _answers(self) -> tuple[Completion, Completion]:
        return self.compared or (self.pair.completion_a, self.pair.completion_b)

    @property
    def chosen(self) -> str | None:
        if self.outcome == Judgement.Choice.A:
            return self._answers()[0].text
        if self.outcome == Judgement.Choice.B:
            return self._answers()[1].text
        return None

    @property
    def rejected(self) -> str | None:
        if self.outcome == Judgement.Choice.A:
            return self._answers()[1].text
        if self.outcome == Judgement.Choice.B:
            return self._answers()[0].text
        return None


class VoteFields(Protocol):
    """What combining reads of a vote: a Judgement, or a plain record of its fields (exports read tuples)."""

    @property
    def choice(self) -> str: ...

    @property
    def strength(self) -> float | None: ...


VoteT = TypeVar("VoteT", bound=VoteFields)


@dataclass(frozen=True, slots=True)
class Combined(Generic[VoteT]):
    """One verdict on a pair, whatever a vote is: the outcome, and the votes behind it (one for "all")."""

    outcome: str  # a, b, tie or both_bad
    votes: int  # all votes on the pair
    agreement: float  # share of the votes that agree with the outcome
    strength: float | None  # mean strength of the votes for the outcome (a or b only)
    judgements: Sequence[VoteT]


def judgements_for_preferences(
    judgements: QuerySet[Judgement] | None = None, rules: PreferenceRules | None = None
) -> QuerySet[Judgement]:
    """Votes with what a verdict needs, ordered by pair so they can be grouped while streaming; only those `rules`
    count when rules are given (callers that sifted the votes already give none)."""
    judgements = Judgement.objects.all() if judgements is None else judgements
    if rules is not None:
        judgements = rules.counted(judgements)
    return judgements.select_related(
        "pair__prompt", "pair__completion_a", "pair__completion_b", "pair__sampled_from"
    ).order_by("pair_id", "id")


def _mean_strength(votes: Sequence[VoteFields]) -> float | None:
    strengths = [vote.strength for vote in votes if vote.strength is not None]
    return sum(strengths) / len(strengths) if strengths else None


def _pair_verdicts(votes: Sequence[VoteT], rules: PreferenceRules) -> Iterator[Combined[VoteT]]:
    # Counted in a plain dict: this runs for every pair a round or an export reads, and making a Counter (an ABC
    # check on its argument) cost as much as the rest of it. Sorted as Counter.most_common sorts.
    counts: dict[str, int] = {}
    for vote in votes:
        counts[vote.choice] = counts.get(vote.choice, 0) + 1
    if rules.combine == "all":
        for vote in votes:
            yield Combined(vote.choice, len(votes), counts[vote.choice] / len(votes), vote.strength, (vote,))
        return
    (top, top_count), *rest = sorted(counts.items(), key=itemgetter(1), reverse=True)
    if rest and rest[0][1] == top_count:
        return  # a draw between outcomes: the votes say nothing clear
    if rules.combine == "unanimous" and rest:
        return
    backing = [vote for vote in votes if vote.choice == top]
    yield Combined(top, len(votes), top_count / len(votes), _mean_strength(backing), votes)


def _kept(verdict: Combined[Any], rules: PreferenceRules) -> bool:
    if verdict.outcome == Judgement.Choice.TIE and not rules.include_ties:
        return False
    if verdict.outcome == Judgement.Choice.BOTH_BAD and not rules.include_both_bad:
        return False
    return verdict.agreement >= rules.min_agreement


def combine(votes: Sequence[VoteT], rules: PreferenceRules) -> Iterator[Combined[VoteT]]:
    """The verdicts the votes on one pair give under the rules: the one rule training rounds and exports follow."""
    for verdict in _pair_verdicts(votes, rules):
        if _kept(verdict, rules):
            yield verdict


def verdicts(judgements: Iterable[Judgement], rules: PreferenceRules) -> Iterator[Verdict]:
    """Combine votes into verdicts. `judgements` must be ordered by pair (see judgements_for_preferences). The
    rankings of a ranking pair give a verdict for each two of its answers (ranking_verdicts)."""
    for _, group in groupby(judgements, key=lambda judgement: judgement.pair_id):
        votes = list(group)
        if votes[0].pair.is_ranking:
            yield from ranking_verdicts(votes, rules)
            continue
        for combined in combine(votes, rules):
            backing = list(combined.judgements)
            yield Verdict(
                votes[0].pair,
                combined.outcome,
                combined.votes,
                combined.agreement,
                combined.strength,
                [vote.pk for vote in backing],
                backing,
            )


@dataclass(frozen=True, slots=True)
class RankedVote:
    """What one ranking says of two of its pair's answers, as a vote on them: a (the first is ranked better), b,
    tie, or both_bad (the ranking said all bad)."""

    choice: str
    judgement: Judgement
    strength: float | None = None  # a ranking has none

    @property
    def annotator_id(self) -> int | None:
        return self.judgement.annotator_id

    @property
    def pk(self) -> int:
        return self.judgement.pk

    @property
    def source(self) -> str:
        return self.judgement.source


@dataclass(frozen=True, slots=True)
class ImpliedVerdict(Generic[VoteT]):
    """A verdict on two answers of a ranking pair, with its share of its rankings' weight."""

    first: int
    second: int
    combined: Combined[VoteT]
    share: float


def implied_verdicts(
    votes: Sequence[VoteT], rankings_of: Sequence[Sequence[int] | None], answer_count: int, rules: PreferenceRules,
    as_vote: Callable[[VoteT, str], VoteT], vote_key: Callable[[VoteT], Hashable],
) -> list[ImpliedVerdict[VoteT]]:  # fmt: skip
    """The verdicts the rankings of one ranking pair give: every two answers combined under the rules like votes on
    a pair of two (rankings.implied_pairs says which pairs a ranking implies, and why).

    `rankings_of` gives each vote's ranking (None: not a ranking, left out); `as_vote` makes the vote it stands for
    on two answers, whose `vote_key` is its ranking's (the same for every vote one ranking stands for). The decisive
    verdicts that the same rankings stand behind share K - 1 of weight (rankings.implied_pair_weight): one ranking
    counts like K - 1 votes however many pairs it implies. Training rounds and exports both read rankings here."""
    ranked = [(vote, ranking) for vote, ranking in zip(votes, rankings_of, strict=True)
              if ranking is not None and len(ranking) == answer_count]  # fmt: skip
    found: list[tuple[int, int, Combined[VoteT]]] = []
    for first, second in combinations(range(answer_count), 2):
        implied = [
            as_vote(vote, rankings.choice_between(ranking, first, second, all_bad=vote.choice == "both_bad"))
            for vote, ranking in ranked
        ]
        found.extend((first, second, combined) for combined in (combine(implied, rules) if implied else ()))
    backing = [tuple(vote_key(vote) for vote in combined.judgements) for _, _, combined in found]
    decisive = Counter(
        key for key, (_, _, combined) in zip(backing, found, strict=True) if combined.outcome in DECISIVE
    )
    return [
        ImpliedVerdict(first, second, combined, rankings.implied_pair_weight(answer_count, decisive[key]) or 1.0)
        for key, (first, second, combined) in zip(backing, found, strict=True)
    ]


def ranking_verdicts(votes: Sequence[Judgement], rules: PreferenceRules) -> Iterator[Verdict]:
    """The verdicts of one ranking pair's rankings (implied_verdicts), each on the two answers it compares."""
    pair = votes[0].pair
    answers = pair.answers()
    ranked = [RankedVote(vote.choice, vote) for vote in votes]
    as_vote: Callable[[RankedVote, str], RankedVote] = lambda vote, choice: RankedVote(choice, vote.judgement)  # noqa: E731
    rankings_of = [vote.ranking for vote in votes]
    for found in implied_verdicts(ranked, rankings_of, len(answers), rules, as_vote, lambda vote: vote.pk):
        combined = found.combined
        backing = list(combined.judgements)
        yield Verdict(pair, combined.outcome, combined.votes, combined.agreement, None, [vote.pk for vote in backing],
                      backing, compared=(answers[found.first], answers[found.second]), share=found.share)  # fmt: skip


# --- Weights of training pairs --------------------------------------------------------------------------------

Weighting = Literal["none", "strength", "competence", "strength+competence"]
WEIGHTING_NAMES = {
    "none": "none (every pair 1)",
    "strength": "strength",
    "competence": "competence",
    "strength+competence": "strength × competence",  # noqa: RUF001 (the multiplication sign is meant)
}
# A vote without a strength (imported votes) counts as "clearly better", the middle of the three.
UNKNOWN_STRENGTH = Judgement.Strength.CLEARLY
STRONGEST = max(Judgement.Strength.values)


class WeighedVote(Protocol):
    """What weighing reads of a vote (a Judgement, or an export's plain record)."""

    @property
    def choice(self) -> str: ...

    @property
    def strength(self) -> float | None: ...

    @property
    def annotator_id(self) -> int | None: ...

    @property
    def source(self) -> str: ...


# What the round page's and the dataset card's readers need to know about a weight; PairWeights computes it.
WEIGHTS_RULE = (
    "A pair's weight comes from the votes for its winner: by strength, their mean strength divided by 3 (slightly "
    "1/3, clearly 2/3, much better 1; a vote without a strength, such as an imported one, counts as clearly); by "
    "competence, their voters' mean MACE competence (a voter without an estimate, such as an imported vote, counts "
    "as the mean estimate, or 1 when there is none); by both, the product of the two. Under the judge rule weight, "
    "a pair's weight is also multiplied by the mean of its winning votes' judge factors (a judge vote: the judge "
    "weight staff set; a person's: 1)."
)


class PairWeights:
    """A training pair's weight from the votes behind it, before normalising (see WEIGHTS_RULE)."""

    def __init__(self, weighting: Weighting, competence: Mapping[int, float], judge_weight: float = 1.0) -> None:
        self.weighting = weighting
        self.competence = competence
        # What a judge vote counts for against a person's 1: the rules' judge_weight under the rule "weight", else 1.
        self.judge_weight = judge_weight
        self.unknown_competence = sum(competence.values()) / len(competence) if competence else 1.0

    def weight(self, outcome: str, votes: Sequence[WeighedVote]) -> float:
        backing = [vote for vote in votes if vote.choice == outcome]
        weight = 1.0
        if self.weighting in ("strength", "strength+competence"):
            strengths = [UNKNOWN_STRENGTH if vote.strength is None else vote.strength for vote in backing]
            weight *= sum(strengths) / len(strengths) / STRONGEST
        if self.weighting in ("competence", "strength+competence"):
            scores = [self._competence(vote.annotator_id) for vote in backing]
            weight *= sum(scores) / len(scores)
        if self.judge_weight != 1.0:
            factors = [self.judge_weight if vote.source == Judgement.Source.JUDGE else 1.0 for vote in backing]
            weight *= sum(factors) / len(factors)
        return weight

    @classmethod
    def for_rules(cls, weighting: Weighting, competence: Mapping[int, float], rules: PreferenceRules) -> PairWeights:
        """The weights rounds and exports use: the weighting, and the judge's weight when the rules weigh it."""
        return cls(weighting, competence, rules.judge_weight if rules.judge_weighted else 1.0)

    @property
    def judged_weight(self) -> float | None:
        """The judge votes' weight when it is not 1 (for weights_described), else None."""
        return None if self.judge_weight == 1.0 else self.judge_weight

    def _competence(self, annotator_id: int | None) -> float:
        if annotator_id is None:
            return self.unknown_competence
        return self.competence.get(annotator_id, self.unknown_competence)


def weights_described(
    weighting: Weighting, weights: Sequence[float], *, normalised: bool = True, judge_weight: float | None = None
) -> str:
    """How the weights were set, for a round page or a dataset card, e.g.
    "strength × competence, normalised to mean 1; min 0.4, max 1.8"; judge_weight: the judge rule weighs the AI
    judge's votes by it."""  # noqa: RUF002
    names = [WEIGHTING_NAMES[weighting]] if weighting != "none" else []
    if judge_weight is not None:
        names.append(f"AI judge's votes {judge_weight:g}")
    if not names or not weights:
        return WEIGHTING_NAMES["none"]
    scale = "normalised to mean 1" if normalised else "as computed, not normalised"
    return f"{' and '.join(names)}, {scale}; min {min(weights):.2f}, max {max(weights):.2f}"


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def preference_row(prompt: list[dict[str, str]], chosen: str, rejected: str) -> dict[str, Any]:
    """TRL's conversational preference format: prompt / chosen / rejected."""
    return {"prompt": prompt, "chosen": assistant(chosen), "rejected": assistant(rejected)}


def trl_preference_row(verdict: Verdict) -> dict[str, Any]:
    """TRL's conversational preference row of an A-or-B verdict."""
    if verdict.chosen is None or verdict.rejected is None:
        raise ValueError(f"pair {verdict.pair.pk}: a {verdict.outcome} verdict has no chosen and rejected answer")
    return preference_row(verdict.pair.prompt.messages, verdict.chosen, verdict.rejected)


# --- Written answers ----------------------------------------------------------------------------------------------


def human_answers_for_preferences(judgements: QuerySet[Judgement]) -> QuerySet[HumanAnswer]:
    """The written answers of these votes (the ones the rules let in) that staff have not rejected, with what their
    rows need, in vote order."""
    return (
        HumanAnswer.objects.filter(judgement__in=judgements, status=HumanAnswer.Status.ACCEPTED)
        .select_related("judgement__pair__prompt", "judgement__pair__completion_a", "judgement__pair__completion_b")
        .order_by("judgement_id")
    )


def edit_preference_rows(answer: HumanAnswer) -> list[dict[str, Any]]:
    """A written answer's rows: chosen over each of its pair's sampled answers, all K of a ranking pair (the one it
    was edited from too: that row holds exactly what the annotator changed). A sampled answer it copied unchanged
    gives no row."""
    pair = answer.judgement.pair
    return [
        preference_row(pair.prompt.messages, answer.text, sampled.text)
        for sampled in pair.answers()
        if sampled.text.strip() != answer.text
    ]


@dataclass(frozen=True)
class WrittenVote:
    """How a written answer's rows are weighed (PairWeights): as a vote of the strongest kind by its author."""

    annotator_id: int | None
    choice: str = "written"
    strength: float | None = STRONGEST
    source: str = Judgement.Source.HUMAN


EDITS_WEIGHT_RULE = (
    "A written answer's rows weigh as one vote of the strongest kind (much better) by its author: by strength 1, by "
    "competence the author's."
)
