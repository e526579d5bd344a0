"""Votes cast the way an annotator casts them: the next pair leased through the annotation service (as the annotate
page leases it), then the vote recorded through the service on the side of the screen the pair was dealt to (as
the vote form posts it). Each vote so holds a lease, moves the pair's vote count and takes a place of its overlap,
which a `Judgement` written by hand would not."""

from __future__ import annotations

import uuid
from typing import Any

from annotate.annotation import services
from annotate.models import Judgement, Pair


def vote_as_annotator(
    annotator: Any,
    *,
    choice: str = "a",
    strength: int | None = 2,
    rationale: str = "",
    pair: Pair | None = None,
    source: str = Judgement.Source.HUMAN,
) -> Judgement:
    """The annotator takes the next pair and votes `choice` (a, b, tie or both_bad, relative to the pair) on it.

    With `pair`, the test says which pair it expects to be dealt: another one fails the test rather than putting
    the vote on a pair the test does not mean."""
    assignment = services.assignment_lease_next(annotator=annotator)
    assert assignment is not None, f"no pair is open for {annotator}"
    if pair is not None:
        assert assignment.pair_id == pair.pk, f"{annotator} was dealt pair {assignment.pair_id}, not {pair.pk}"
    if choice in ("a", "b"):
        side = "left" if (choice == "a") == assignment.a_on_left else "right"
    else:
        side, strength = choice, None
    recorded = services.judgement_record(
        annotator=annotator,
        pair_id=assignment.pair_id,
        choice=side,
        strength=strength,
        rationale=rationale,
        idempotency_key=uuid.uuid4(),
        source=source,
    )
    assert recorded.created and recorded.judgement.choice == choice
    return recorded.judgement


def vote_with_edit(annotator: Any, edit: Any, *, choice: str = "a", strength: int = 2) -> Judgement:
    """The annotator takes the next pair, votes `choice` (a, or both_bad) on it and sends `edit(pair)` as the better
    answer written with the vote (empty: none), through annotate.annotation.edits as the vote form does."""
    from annotate.annotation import edits

    assignment = services.assignment_lease_next(annotator=annotator)
    assert assignment is not None, f"no pair is open for {annotator}"
    side = ("left" if assignment.a_on_left else "right") if choice == "a" else choice
    recorded = edits.judgement_record_with_edit(
        annotator=annotator,
        pair_id=assignment.pair_id,
        choice=side,
        strength=strength if choice == "a" else None,
        rationale="",
        idempotency_key=uuid.uuid4(),
        edit=edit(assignment.pair),
    )
    return recorded.judgement


def rank_as_annotator(annotator: Any, *, pair: Pair, ranking: list[int] | None = None) -> Judgement:
    """The annotator takes the next pair (it must be `pair`, a ranking pair) and ranks its answers so that the
    stored ranking, by the pair's own positions (A, B, extras), is `ranking` whatever order their screen showed
    them in; without a ranking they find every answer bad."""
    assignment = services.assignment_lease_next(annotator=annotator)
    assert assignment is not None, f"no pair is open for {annotator}"
    assert assignment.pair_id == pair.pk, f"{annotator} was dealt pair {assignment.pair_id}, not {pair.pk}"
    order = assignment.answer_order
    recorded = services.judgement_record(
        annotator=annotator,
        pair_id=pair.pk,
        choice="rank" if ranking else "all_bad",
        strength=None,
        rationale="",
        idempotency_key=uuid.uuid4(),
        ranks=[ranking[position] for position in order] if ranking else [1] * len(order),
    )
    assert recorded.created and recorded.judgement.ranking == (ranking or [1] * len(order))
    return recorded.judgement
