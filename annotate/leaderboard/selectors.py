"""The leaderboard's reads: head-to-head votes from the database into ratings, and the results back onto
model versions for the page, the API and the lineage chart.

A head-to-head vote is a vote on a pair whose two answers come from different model versions. Imported preference
pairs hold two answers of one external version, and ordinary pairs two answers of the serving version: neither
counts. Every vote counts, whoever gave it (people and simulated annotators alike).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, F, Max, QuerySet
from django.db.models.functions import Length

from annotate.leaderboard.ratings import (
    ANCHOR_RATING,
    POINTS_PER_LOGIT,
    Leaderboard,
    LengthEffect,
    Outcome,
    Rating,
    Record,
    Vote,
    leaderboard_compute,
)
from annotate.models import Judgement, ModelVersion

CACHE_SECONDS = 24 * 3600  # the key changes with every new or changed vote; this only bounds stale entries


def head_to_head_judgements() -> QuerySet[Judgement]:
    return Judgement.objects.exclude(pair__completion_a__model_version=F("pair__completion_b__model_version"))


def head_to_head_votes() -> list[Vote]:
    """Every head-to-head vote, versions named by their id, answer lengths in characters."""
    rows = (
        head_to_head_judgements()
        .annotate(length_a=Length("pair__completion_a__text"), length_b=Length("pair__completion_b__text"))
        .order_by("id")
        .values_list(
            "pair__completion_a__model_version_id",
            "pair__completion_b__model_version_id",
            "choice",
            "length_a",
            "length_b",
        )
    )
    return [Vote(str(row[0]), str(row[1]), cast(Outcome, row[2]), row[3], row[4]) for row in rows]


def _reference(versions: list[ModelVersion]) -> ModelVersion:
    """The base of the lineage: the oldest version without a parent that is not external; else the oldest."""
    roots = [version for version in versions if version.parent_id is None]
    served = [version for version in roots if version.status != ModelVersion.Status.EXTERNAL]
    return min(served or roots or versions, key=lambda version: version.pk)


def _lineage_order(versions: list[ModelVersion]) -> list[ModelVersion]:
    """Depth first from the bases: every version after its parent, siblings oldest first."""
    present = {version.pk for version in versions}
    children: dict[int | None, list[ModelVersion]] = {}
    for version in sorted(versions, key=lambda version: version.pk):
        parent = version.parent_id if version.parent_id in present else None
        children.setdefault(parent, []).append(version)
    ordered: list[ModelVersion] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        version = stack.pop()
        ordered.append(version)
        stack.extend(reversed(children.get(version.pk, [])))
    return ordered


@dataclass(frozen=True)
class Standing:
    """One version's line on the leaderboard."""

    version: ModelVersion
    rating: Rating
    record: Record
    length_controlled: Rating | None


# Under this many votes a version's bootstrap interval is too wide to act on: its rating is marked as tentative.
FEW_VOTES = 20
# Versions that can never be served again: they keep their rating but take no rank.
UNRANKED = (ModelVersion.Status.REJECTED,)


def _rank(rating: Rating | None, among: list[Rating | None]) -> int | None:
    """1 + the number of versions in `among` whose interval lies wholly above this one's (the ratings' own rule)."""
    if rating is None:
        return None
    return 1 + sum(1 for other in among if other is not None and other.lower > rating.upper)


@dataclass(frozen=True)
class BoardRow:
    standing: Standing
    rank: int | None  # None for a version that takes no rank (rejected)
    length_controlled_rank: int | None
    few_votes: bool


def standings_ranked(standings: list[Standing]) -> tuple[list[BoardRow], list[BoardRow]]:
    """The ranked versions best first, then the unranked ones (rejected), each ranked among the ranked only.

    The one rule for a rank, read by the page and the API alike: a rejected candidate keeps its rating but takes no
    rank, and does not push the versions that may still serve down.
    """
    ranked = [standing for standing in standings if standing.version.status not in UNRANKED]
    unranked = [standing for standing in standings if standing.version.status in UNRANKED]
    ratings: list[Rating | None] = [standing.rating for standing in ranked]
    controlled = [standing.length_controlled for standing in ranked]

    def row(standing: Standing, *, ranks: bool) -> BoardRow:
        return BoardRow(
            standing,
            _rank(standing.rating, ratings) if ranks else None,
            _rank(standing.length_controlled, controlled) if ranks else None,
            standing.record.votes < FEW_VOTES,
        )

    return [row(standing, ranks=True) for standing in ranked], [row(standing, ranks=False) for standing in unranked]


@dataclass(frozen=True)
class MatrixRow:
    version: ModelVersion
    cells: list[Record | None]  # against each version of Standings.matrix_columns; None: never compared


@dataclass(frozen=True)
class Standings:
    standings: list[Standing]  # best first
    matrix_columns: list[ModelVersion]
    matrix: list[MatrixRow]
    reference: ModelVersion | None
    unconnected: list[ModelVersion]  # versions with votes but no chain of votes to the reference
    votes: int
    bootstrap_rounds: int
    length_control: bool
    length_effect: LengthEffect | None
    lineage_chart: dict[str, Any]


def _fingerprint() -> str:
    """Changes whenever a head-to-head vote is added, changed or removed."""
    summary = head_to_head_judgements().aggregate(count=Count("id"), last_id=Max("id"), last_change=Max("updated_at"))
    return hashlib.sha256(repr(sorted(summary.items())).encode()).hexdigest()[:32]


def _computed(votes: list[Vote], *, anchor: str, length_control: bool) -> Leaderboard:
    rounds = settings.LEADERBOARD_BOOTSTRAP_ROUNDS
    key = f"leaderboard:{_fingerprint()}:{anchor}:{rounds}:{int(length_control)}"
    board = cache.get(key)
    if not isinstance(board, Leaderboard):
        board = leaderboard_compute(votes, anchor=anchor, bootstrap_rounds=rounds, length_control=length_control)
        cache.set(key, board, CACHE_SECONDS)
    return board


def _series(label: str, ratings: list[Rating | None], *, line: bool) -> dict[str, Any]:
    return {
        "label": label,
        "values": [round(rating.rating, 1) if rating else None for rating in ratings],
        "intervals": [[round(rating.lower, 1), round(rating.upper, 1)] if rating else None for rating in ratings],
        "line": line,
    }


def _lineage_chart(standings: list[Standing], length_control: bool) -> dict[str, Any]:
    """The spec static/pairloop/charts.js draws: rating per version along the lineage, with interval bars."""
    ordered = _lineage_order([standing.version for standing in standings])
    by_version = {standing.version.pk: standing for standing in standings}
    rows = [by_version[version.pk] for version in ordered]
    # Join the points with a line only when the versions form one chain; a branching lineage gets points only.
    chain = all(row.version.parent_id == previous.version.pk for previous, row in itertools.pairwise(rows))
    series = [_series("Rating", [row.rating for row in rows], line=chain)]
    if length_control:
        series.append(_series("Length-controlled rating", [row.length_controlled for row in rows], line=chain))
    return {
        "title": "Rating per version along the lineage (95 % intervals)",
        "x": {"label": "Model version (parents before children)", "categories": [row.version.name for row in rows]},
        "y": {"label": "Rating"},
        "series": series,
    }


def leaderboard_standings(*, length_control: bool = False) -> Standings:
    """The leaderboard of every version with head-to-head votes, its reference (the base model) at 1000."""
    votes = head_to_head_votes()
    ids = {int(version) for vote in votes for version in (vote.version_a, vote.version_b)}
    versions = {version.pk: version for version in ModelVersion.objects.filter(pk__in=ids).select_related("parent")}
    if not votes:
        return Standings([], [], [], None, [], 0, settings.LEADERBOARD_BOOTSTRAP_ROUNDS, length_control, None, {})
    reference = _reference(list(versions.values()))
    board = _computed(votes, anchor=str(reference.pk), length_control=length_control)
    controlled = {rating.version: rating for rating in board.length_controlled or []}
    standings = [
        Standing(
            version=versions[int(rating.version)],
            rating=rating,
            record=board.records[rating.version],
            length_controlled=controlled.get(rating.version),
        )
        for rating in board.ratings
    ]
    columns = [standing.version for standing in standings]
    matrix = [
        MatrixRow(
            version=row,
            cells=[board.matrix.get((str(row.pk), str(column.pk))) if column != row else None for column in columns],
        )
        for row in columns
    ]
    return Standings(
        standings=standings,
        matrix_columns=columns,
        matrix=matrix,
        reference=reference,
        unconnected=[versions[int(version)] for version in board.unconnected],
        votes=board.votes,
        bootstrap_rounds=board.bootstrap_rounds,
        length_control=length_control,
        length_effect=board.length_effect,
        lineage_chart=_lineage_chart(standings, length_control),
    )


SCALE_DESCRIPTION = (
    f"Bradley-Terry ratings, {POINTS_PER_LOGIT:.1f} points per logit (Elo-like: 400 points is 10:1 odds), "
    f"the base model at {ANCHOR_RATING:.0f}"
)
