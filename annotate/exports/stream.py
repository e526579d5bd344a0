"""Streaming an export: votes read in chunks, combined pair by pair under the preference rules (annotate.preferences,
the same rules training rounds use), turned into rows by the format and written as they come, so memory stays flat
however many votes there are; the statistics the dataset card reports are gathered on the way."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.db.models import QuerySet

from annotate.exports.filters import ExportFilters, judgements_matching
from annotate.exports.formats import FORMATS, RowContext
from annotate.exports.writers import open_writer
from annotate.models import Judgement
from annotate.preferences import Verdict, judgements_for_preferences, verdicts

READ_CHUNK = 2000  # votes fetched from the database at a time
Progress = Callable[[int], None]

# What the rows and the card read; the rest (sampling parameters, timings, ...) is left in the database, which
# more than halves the time an export spends turning database rows into objects.
EXPORT_FIELDS = (
    "pair_id", "annotator_id", "choice", "strength", "source", "source_detail", "created_at",
    "pair__prompt_id", "pair__completion_a_id", "pair__completion_b_id", "pair__sampled_from_id",
    "pair__prompt__messages", "pair__prompt__prompt_set",
    "pair__completion_a__text", "pair__completion_a__model_version_id",
    "pair__completion_b__text", "pair__completion_b__model_version_id",
    "pair__sampled_from__name", "pair__sampled_from__status",
)  # fmt: skip


def votes_to_export(filters: ExportFilters) -> QuerySet[Judgement]:
    """The matching votes, ordered by pair, with only the fields exports use."""
    return judgements_for_preferences(judgements_matching(filters)).only(*EXPORT_FIELDS)


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
    first_vote: datetime | None = None
    last_vote: datetime | None = None

    def add(self, verdict: Verdict) -> None:
        self.verdicts += 1
        self.outcomes[verdict.outcome] += 1
        self.answers_by_version[verdict.pair.completion_a.model_version_id] += 1
        self.answers_by_version[verdict.pair.completion_b.model_version_id] += 1
        for vote in verdict.judgements:
            self.sources[vote.source] += 1
            if vote.source == Judgement.Source.IMPORTED:
                self.imported_from[vote.source_detail] += 1
            self.first_vote = min(self.first_vote or vote.created_at, vote.created_at)
            self.last_vote = max(self.last_vote or vote.created_at, vote.created_at)


def _counted(judgements: Iterator[Judgement], stats: ExportStats, on_progress: Progress | None) -> Iterator[Judgement]:
    for judgement in judgements:
        stats.votes_read += 1
        if on_progress is not None and stats.votes_read % READ_CHUNK == 0:
            on_progress(READ_CHUNK)
        yield judgement


def export_write(
    *, dataset_format: str, file_format: str, filters: ExportFilters, path: Path, on_progress: Progress | None = None
) -> ExportStats:
    """Stream the matching votes into `path` as rows of the format. Writes beside it and renames when complete,
    so a failed export never leaves half a file under the final name."""
    spec = FORMATS[dataset_format]
    stats = ExportStats()
    context = RowContext()
    votes = votes_to_export(filters).iterator(chunk_size=READ_CHUNK)
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = open_writer(file_format, partial, spec.schema)
    try:
        try:
            for verdict in verdicts(_counted(votes, stats, on_progress), spec.rules(filters.rules)):
                written = 0
                for row in spec.rows(verdict, context):
                    writer.write(row)
                    written += 1
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
