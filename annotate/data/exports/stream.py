"""Streaming an export: votes read in chunks, combined pair by pair under the preference rules (quality.preferences,
the same rules training rounds use), turned into rows by the format and written as they come, so memory stays flat
however many votes there are; the statistics the dataset card reports are gathered on the way.

The votes are read as plain tuples (values_list) through a server-side cursor on PostgreSQL (QuerySet.iterator),
each pair's prompt decoded once however many votes it has, and the rows written in batches.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast

from annotate.data.exports.filters import ExportFilters, judgements_matching
from annotate.data.exports.formats import (
    FORMATS,
    WEIGHT_COLUMN,
    ExportPair,
    ExportVerdict,
    ExportVote,
    RowContext,
    sampling_label,
)
from annotate.data.exports.writers import open_writer
from annotate.models import Judgement
from annotate.quality.preferences import PairWeights, PreferenceRules, combine

READ_CHUNK = 2000  # votes fetched from the database at a time (and between progress reports)
Progress = Callable[[int], None]

VOTE_FIELDS = ("id", "pair_id", "annotator_id", "choice", "strength", "source", "source_detail", "created_at")
# The prompt comes as its stored JSON text and is decoded once per pair, not once per vote.
PAIR_FIELDS = (
    "pair__prompt_id", "prompt_json", "pair__prompt__prompt_set",
    "pair__completion_a_id", "pair__completion_a__text", "pair__completion_a__model_version_id",
    "pair__completion_b_id", "pair__completion_b__text", "pair__completion_b__model_version_id",
    "pair__sampled_from_id", "pair__sampled_from__status", "a_sampling_json", "b_sampling_json",
)  # fmt: skip
_VOTE = slice(0, len(VOTE_FIELDS))
_PAIR_ID = itemgetter(1)


def votes_to_export(
    filters: ExportFilters, left_out: dict[str, Q] | None = None
) -> QuerySet[Judgement, tuple[Any, ...]]:
    """The matching votes as tuples (VOTE_FIELDS then PAIR_FIELDS), ordered by pair so they group while streaming;
    `left_out`: the rules' conditions when already decided (PreferenceRules.left_out_conditions)."""
    return (
        filters.rules.counted(judgements_matching(filters), left_out)
        .annotate(
            prompt_json=Cast("pair__prompt__messages", TextField()),
            a_sampling_json=Cast("pair__completion_a__sampling", TextField()),
            b_sampling_json=Cast("pair__completion_b__sampling", TextField()),
        )
        .order_by("pair_id", "id")
        .values_list(*VOTE_FIELDS, *PAIR_FIELDS)
    )


def _pair(pair_id: int, row: tuple[Any, ...]) -> ExportPair:
    (prompt_id, prompt_json, prompt_set, a_id, a_text, a_version, b_id, b_text, b_version, sampled, status,
     a_sampling, b_sampling) = row[len(VOTE_FIELDS):]  # fmt: skip
    return ExportPair(
        pair_id, prompt_id, orjson.loads(prompt_json), prompt_set,
        a_id, a_text, a_version, b_id, b_text, b_version, sampled, status,
        sampling_label(orjson.loads(a_sampling)), sampling_label(orjson.loads(b_sampling)),
    )  # fmt: skip


def export_verdicts(rows: Iterable[tuple[Any, ...]], rules: PreferenceRules) -> Iterator[ExportVerdict]:
    """Combine tuples from votes_to_export into verdicts, pair by pair, with annotate.quality.preferences.combine."""
    make_vote = ExportVote._make
    for pair_id, group in groupby(rows, key=_PAIR_ID):
        pair_rows = list(group)
        votes = [make_vote(row[_VOTE]) for row in pair_rows]
        pair: ExportPair | None = None  # built (and its prompt decoded) only when a verdict needs it
        for combined in combine(votes, rules):
            pair = pair or _pair(pair_id, pair_rows[0])
            yield ExportVerdict(
                pair, combined.outcome, combined.votes, combined.agreement, combined.strength, combined.judgements
            )


@dataclass
class ExportStats:
    """What went into a file, gathered while it streams (nothing here grows with the number of rows)."""

    rows: int = 0
    votes_read: int = 0
    verdicts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    left_out: Counter[str] = field(default_factory=Counter)  # verdicts this format cannot hold, by outcome
    sources: Counter[str] = field(default_factory=Counter)  # votes behind the rows, by source
    imported_from: Counter[str] = field(default_factory=Counter)  # imported votes behind the rows, by file
    answers_by_version: Counter[int] = field(default_factory=Counter)
    answers_by_sampling: Counter[str] = field(default_factory=Counter)  # by formats.sampling_label
    first_vote: datetime | None = None
    last_vote: datetime | None = None
    lightest: float | None = None  # the smallest and largest row weight, when the rows carry weights
    heaviest: float | None = None

    def weigh(self, weight: float) -> None:
        self.lightest = weight if self.lightest is None else min(self.lightest, weight)
        self.heaviest = weight if self.heaviest is None else max(self.heaviest, weight)

    def add(self, verdict: ExportVerdict) -> None:
        self.verdicts += 1
        self.outcomes[verdict.outcome] += 1
        self.answers_by_version[verdict.pair.completion_a_version] += 1
        self.answers_by_version[verdict.pair.completion_b_version] += 1
        self.answers_by_sampling[verdict.pair.completion_a_sampling] += 1
        self.answers_by_sampling[verdict.pair.completion_b_sampling] += 1
        for vote in verdict.judgements:
            self.sources[vote.source] += 1
            if vote.source == Judgement.Source.IMPORTED:
                self.imported_from[vote.source_detail] += 1
            if self.first_vote is None or vote.created_at < self.first_vote:
                self.first_vote = vote.created_at
            if self.last_vote is None or vote.created_at > self.last_vote:
                self.last_vote = vote.created_at


def _counted(rows: Iterator[tuple[Any, ...]], stats: ExportStats, on_progress: Progress | None) -> Iterator[Any]:
    for row in rows:
        stats.votes_read += 1
        if on_progress is not None and stats.votes_read % READ_CHUNK == 0:
            on_progress(READ_CHUNK)
        yield row


def export_write(
    *, dataset_format: str, file_format: str, filters: ExportFilters, path: Path, on_progress: Progress | None = None
) -> ExportStats:
    """Stream the matching votes into `path` as rows of the format. Writes beside it and renames when complete,
    so a failed export never leaves half a file under the final name."""
    spec = FORMATS[dataset_format]
    weighted = filters.weighting != "none"
    left_out, competence = filters.rules.left_out_and_competence(judgements_matching(filters), filters.weighting)
    if weighted:
        spec = spec.with_weights()
    stats = ExportStats()
    context = RowContext(PairWeights(filters.weighting, competence) if weighted else None)
    rows = votes_to_export(filters, left_out).iterator(chunk_size=READ_CHUNK)
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = open_writer(file_format, partial, spec.schema)
    build_rows, write = spec.rows, writer.write
    try:
        try:
            for verdict in export_verdicts(_counted(rows, stats, on_progress), spec.rules(filters.rules)):
                written = 0
                for row in build_rows(verdict, context):
                    write(row)
                    written += 1
                    if weighted:
                        stats.weigh(row[WEIGHT_COLUMN.name])
                if written:
                    stats.rows += written
                    stats.add(verdict)
                else:
                    stats.left_out[verdict.outcome] += 1
        finally:
            writer.close()
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if on_progress is not None:
        on_progress(stats.votes_read % READ_CHUNK)
    return stats
