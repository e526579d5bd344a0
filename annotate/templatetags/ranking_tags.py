"""What pages show of ranking pairs: the annotator's answers in screen order (templates/annotate/_rank.html), and
staff's extra answers and rankings in words (templates/campaigns/pair.html)."""

from __future__ import annotations

from dataclasses import dataclass

from django import template

from annotate.annotation import rankings
from annotate.models import Assignment, Completion, Pair, UndoneJudgement

register = template.Library()
ANSWER_LETTERS = "ABCD"  # the staff pages' names of a pair's answers by position


@dataclass(frozen=True)
class RankRow:
    place: int  # 0-based place on screen: the form's rank_<place> field
    number: int  # as the annotator reads and types it: place + 1
    completion: Completion
    rank: int | None  # the rank given before, when the page shows a vote that was undone


@register.simple_tag
def rank_rows(assignment: Assignment, previous: UndoneJudgement | None = None) -> list[RankRow]:
    answers = assignment.pair.answers()
    ranking = previous.ranking if previous is not None and previous.choice != "both_bad" else None
    return [
        RankRow(place, place + 1, answers[position], ranking[position] if ranking else None)
        for place, position in enumerate(assignment.answer_order)
    ]


@register.filter
def ranking_words(ranking: list[int] | None) -> str:
    """A stored ranking in words by the pair's answer letters, best first: "B > A = C"."""
    return rankings.ranking_describe(ranking, ANSWER_LETTERS) if ranking else ""


@register.simple_tag
def extra_answers(pair: Pair) -> list[tuple[str, Completion]]:
    """A ranking pair's answers beyond A and B, with their letters (C, D)."""
    return [(ANSWER_LETTERS[position], answer) for position, answer in enumerate(pair.answers()) if position >= 2]
