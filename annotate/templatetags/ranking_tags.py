"""What the rank partial (templates/annotate/_rank.html) shows of a ranking pair: its answers in screen order."""

from __future__ import annotations

from dataclasses import dataclass

from django import template

from annotate.models import Assignment, Completion, UndoneJudgement

register = template.Library()


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
