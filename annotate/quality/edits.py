"""What an annotator's written answers (HumanAnswer) say in their quality row: how many they wrote with the votes
being read, and how much those change the answers they started from."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, IntegerField, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, Length

from annotate.models import HumanAnswer, Judgement


@dataclass(frozen=True)
class EditSignals:
    written: int = 0
    # Characters the diffs added and removed over the characters of both texts, pooled over their written answers
    # (HumanAnswer.changed_share, weighed by length): 0 nothing changed, 1 nothing kept; None without any.
    changed_share: float | None = None


def edit_signals(judgements: QuerySet[Judgement]) -> dict[int, EditSignals]:
    """Each author's EditSignals over the written answers of `judgements` (one query)."""
    zero = Value(0, output_field=IntegerField())
    rows = (
        HumanAnswer.objects.filter(judgement__in=judgements)
        .values("author_id")
        .annotate(
            written=Count("id"),
            changed=Sum("chars_added") + Sum("chars_removed"),
            total=Coalesce(Sum(Length("text")), zero) + Coalesce(Sum(Length("started_from__text")), zero),
        )
        .order_by()
    )
    return {
        row["author_id"]: EditSignals(row["written"], row["changed"] / row["total"] if row["total"] else None)
        for row in rows
    }
