"""Streaming an export: votes read in chunks, combined pair by pair under the preference rules (quality.preferences,
the same rules training rounds use), turned into rows by the format and written as they come, so memory stays flat
however many votes there are; the statistics the dataset card reports are gathered on the way.

The votes are read as plain tuples through a server-side cursor on PostgreSQL, a chunk at a time, straight from the
database cursor: Django's per-value converters are left out (on SQLite they made every vote's time aware, a third
of an export's time), and a vote's time is made a UTC datetime only where a row or the card shows it (SQLite's
driver gives it naive). Each pair's prompt is decoded once however many votes it has, and the rows are written in
batches; a ranking pair's extra answers are read with one query a chunk of votes.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

import orjson
from django.conf import settings
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.db.models.sql.compiler import SQLCompiler
from django.db.models.sql.constants import MULTI

from annotate.data.exports.edits import edit_rows_write
from annotate.data.exports.filters import ExportFilters, judgements_matching
from annotate.data.exports.formats import (
    FORMATS,
    WEIGHT_COLUMN,
    ExportAnswer,
    ExportPair,
    ExportVerdict,
    ExportVote,
    RowContext,
    sampling_label,
)
from annotate.data.exports.writers import open_writer
from annotate.models import Completion, Judgement, PairExtraAnswer
from annotate.quality.preferences import PairWeights, PreferenceRules, combine, implied_verdicts
from annotate.turns.services import is_multi_turn

READ_CHUNK = 2000  # votes fetched from the database at a time (and between progress reports)
Progress = Callable[[int], None]

VOTE_FIELDS = (
    "id", "pair_id", "annotator_id", "choice", "strength", "source", "source_detail", "created_at", "ranking_json",
)  # fmt: skip
# The prompt comes as its stored JSON text and is decoded once per pair, not once per vote.
PAIR_FIELDS = (
    "pair__prompt_id", "prompt_json", "pair__prompt__prompt_set",
    "pair__completion_a_id", "pair__completion_a__text", "pair__completion_a__model_version_id",
    "pair__completion_b_id", "pair__completion_b__text", "pair__completion_b__model_version_id",
    "pair__sampled_from_id", "pair__sampled_from__status", "a_sampling_json", "b_sampling_json", "pair__answer_count",
)  # fmt: skip
EXTRA_ANSWER_FIELDS = ("id", "text", "model_version_id", "sampling")  # of a ranking pair's extra answers
_VOTE = slice(0, len(VOTE_FIELDS))
_PAIR_ID = itemgetter(1)
_CREATED_AT = VOTE_FIELDS.index("created_at")
_RANKING = VOTE_FIELDS.index("ranking_json")
Rows = list[tuple[Any, ...]]  # as the database cursor gives them (sqlite3 and psycopg give tuples)
VoteTime = Callable[[Any], datetime]  # a vote's time as the database cursor gave it, as a datetime


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
            ranking_json=Cast("ranking", TextField()),
        )
        .order_by("pair_id", "id")
        .values_list(*VOTE_FIELDS, *PAIR_FIELDS)
    )


class VoteRows:
    """The tuples of votes_to_export read a chunk at a time from the database cursor (a server-side one on
    PostgreSQL, as QuerySet.iterator uses), with Django's converters applied to every column but the vote's time,
    which stays as the database gave it: `vote_time` turns it into a datetime."""

    def __init__(self, queryset: QuerySet[Judgement, tuple[Any, ...]], chunk_size: int) -> None:
        self._chunk_size = chunk_size
        self._compiler: SQLCompiler = queryset.query.get_compiler(using=queryset.db)
        self._compiler.setup_query()  # what it selects, so its converters are known before it runs
        columns = [selected[0] for selected in self._compiler.select[: self._compiler.col_count]]
        self._converters = self._compiler.get_converters(columns)
        time_converters = self._converters.pop(_CREATED_AT, None)
        self.vote_time: VoteTime = _vote_time(self._compiler.connection, time_converters)

    def chunks(self) -> Iterator[list[tuple[Any, ...]]]:
        compiler, converters = self._compiler, self._converters
        chunked = not compiler.connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
        for chunk in compiler.execute_sql(MULTI, chunked_fetch=chunked, chunk_size=self._chunk_size) or ():
            # The other columns need no converter on the databases we use; one that does gets it, as it would
            # through QuerySet.iterator.
            yield (
                [tuple(row) for row in compiler.apply_converters(chunk, converters)]
                if converters
                else cast(Rows, chunk)
            )


def _vote_time(connection: Any, converters: tuple[list[Any], Any] | None) -> VoteTime:
    if converters is None:
        return _as_is  # PostgreSQL's driver gives aware datetimes
    if connection.vendor == "sqlite" and settings.USE_TZ and connection.timezone == UTC:
        return _sqlite_utc_time  # what Django's SQLite converter does for this case, without its checks
    functions, expression = converters
    return lambda raw: _converted(raw, functions, expression, connection)


def _as_is(raw: Any) -> datetime:
    return raw  # type: ignore[no-any-return]


def _sqlite_utc_time(raw: Any) -> datetime:
    # Django's sqlite3 connection parses the stored text into a naive datetime (the column's declared type): UTC.
    return (raw if isinstance(raw, datetime) else datetime.fromisoformat(raw)).replace(tzinfo=UTC)


def _converted(raw: Any, converters: list[Any], expression: Any, connection: Any) -> datetime:
    for converter in converters:
        raw = converter(raw, expression, connection)
    return raw  # type: ignore[no-any-return]


def _pair(pair_id: int, row: tuple[Any, ...]) -> ExportPair:
    (prompt_id, prompt_json, prompt_set, a_id, a_text, a_version, b_id, b_text, b_version, sampled, status,
     a_sampling, b_sampling, _answer_count) = row[len(VOTE_FIELDS):]  # fmt: skip
    return ExportPair(
        pair_id, prompt_id, orjson.loads(prompt_json), prompt_set,
        a_id, a_text, a_version, b_id, b_text, b_version, sampled, status,
        sampling_label(orjson.loads(a_sampling)), sampling_label(orjson.loads(b_sampling)),
    )  # fmt: skip


def export_verdicts(
    rows: Iterable[tuple[Any, ...]],
    rules: PreferenceRules,
    extra_answers: ExtraAnswers,
    *,
    whole_rankings: bool = False,
) -> Iterator[ExportVerdict]:
    """Combine tuples from votes_to_export into verdicts, pair by pair, with annotate.quality.preferences.combine.
    A vote's `created_at` is as the rows give it (VoteRows: as the database cursor gave it). The rankings of a
    ranking pair give verdicts on every two of its answers (_ranking_verdicts), or with `whole_rankings` one verdict
    per ranking carrying all the answers; the rows must have come through `extra_answers.read_for`."""
    make_vote = ExportVote._make
    for pair_id, group in groupby(rows, key=_PAIR_ID):
        pair_rows = list(group)
        votes = [make_vote(row[_VOTE]) for row in pair_rows]
        if pair_rows[0][-1] > 2:
            ranking_pair = _ranking_pair(pair_id, pair_rows[0], extra_answers.pop(pair_id))
            yield from _ranking_verdicts(ranking_pair, votes, rules, whole_rankings)
            continue
        if whole_rankings:
            continue  # a vote on two answers is no ranking
        pair: ExportPair | None = None  # built (and its prompt decoded) only when a verdict needs it
        for combined in combine(votes, rules):
            pair = pair or _pair(pair_id, pair_rows[0])
            yield ExportVerdict(
                pair, combined.outcome, combined.votes, combined.agreement, combined.strength, combined.judgements
            )


class ExtraAnswers:
    """The answers beyond A and B of the ranking pairs among the votes: read with one query for each chunk of votes
    that holds ranking pairs (one query per ranking pair made them most of an export's time), and forgotten once
    their pair is built, so that what is held never outgrows a chunk."""

    def __init__(self) -> None:
        self._by_pair: dict[int, list[ExportAnswer]] = {}

    def read_for(self, chunks: Iterable[Rows]) -> Iterator[Rows]:
        """The chunks as they come, each once the extra answers of its ranking pairs are read."""
        for chunk in chunks:
            # A pair whose votes span two chunks was read with the first.
            wanted = {row[1] for row in chunk if row[-1] > 2} - self._by_pair.keys()
            if wanted:
                self._read(wanted)
            yield chunk

    def _read(self, pair_ids: set[int]) -> None:
        # Two queries, each through its index whatever the planner's statistics say: joined in one, PostgreSQL read
        # every answer's text (a hash join) when the tables had just been filled and not analysed yet, 200 ms a chunk.
        positions = PairExtraAnswer.objects.filter(pair_id__in=pair_ids).order_by("pair_id", "position")
        extra = list(positions.values_list("pair_id", "completion_id"))
        answers = {
            completion: ExportAnswer(completion, text, version, sampling_label(sampling))
            for completion, text, version, sampling in Completion.objects.filter(
                pk__in=[completion for _, completion in extra]
            ).values_list(*EXTRA_ANSWER_FIELDS)
        }
        for pair_id, completion in extra:
            self._by_pair.setdefault(pair_id, []).append(answers[completion])

    def pop(self, pair_id: int) -> list[ExportAnswer]:
        return self._by_pair.pop(pair_id, [])


def _ranking_pair(pair_id: int, row: tuple[Any, ...], extra: list[ExportAnswer]) -> ExportPair:
    """A ranking pair with all its answers: A, B and the `extra` ones."""
    pair = _pair(pair_id, row)
    first = ExportAnswer(pair.completion_a_id, pair.completion_a_text, pair.completion_a_version,
                         pair.completion_a_sampling)  # fmt: skip
    second = ExportAnswer(pair.completion_b_id, pair.completion_b_text, pair.completion_b_version,
                          pair.completion_b_sampling)  # fmt: skip
    return replace(pair, answers=(first, second, *extra))


def _comparing(pair: ExportPair, first: ExportAnswer, second: ExportAnswer) -> ExportPair:
    """The pair as two of its answers, as the row builders read a pair of two."""
    return ExportPair(
        pair.id, pair.prompt_id, pair.prompt, pair.prompt_set,
        first.id, first.text, first.version, second.id, second.text, second.version,
        pair.sampled_from, pair.sampled_from_status, first.sampling, second.sampling, pair.answers,
    )  # fmt: skip


def _ranking_verdicts(
    pair: ExportPair, votes: list[ExportVote], rules: PreferenceRules, whole_rankings: bool
) -> Iterator[ExportVerdict]:
    votes = [vote._replace(ranking=orjson.loads(vote.ranking)) if vote.ranking else vote for vote in votes]
    if whole_rankings:
        for vote in votes:
            yield ExportVerdict(pair, vote.choice, len(votes), 1.0, None, (vote,))
        return
    rankings_of = [vote.ranking for vote in votes]
    # One pair of two per two answers compared, shared by their verdicts (the row builders then build what a pair's
    # rows share once).
    compared: dict[tuple[int, int], ExportPair] = {}
    for found in implied_verdicts(votes, rankings_of, len(pair.answers), rules,
                                  lambda vote, choice: vote._replace(choice=choice), lambda vote: vote.id):  # fmt: skip
        combined, key = found.combined, (found.first, found.second)
        two = compared.get(key)
        if two is None:
            two = compared[key] = _comparing(pair, pair.answers[found.first], pair.answers[found.second])
        yield ExportVerdict(
            two, combined.outcome, combined.votes, combined.agreement, None, combined.judgements, share=found.share
        )


@dataclass
class ExportStats:
    """What went into a file, gathered while it streams (nothing here grows with the number of rows)."""

    rows: int = 0
    votes_read: int = 0
    rankings_read: int = 0  # rankings among the votes read (pairs of 3 or 4 answers)
    verdicts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    left_out: Counter[str] = field(default_factory=Counter)  # verdicts this format cannot hold, by outcome
    sources: Counter[str] = field(default_factory=Counter)  # votes behind the rows, by source
    imported_from: Counter[str] = field(default_factory=Counter)  # imported votes behind the rows, by file
    answers_by_version: Counter[int] = field(default_factory=Counter)
    answers_by_sampling: Counter[str] = field(default_factory=Counter)  # by formats.sampling_label
    multi_turn: int = 0  # verdicts on conversations of more than one user turn (annotate.turns)
    first_vote: datetime | None = None  # as a datetime once the export is written (finish)
    last_vote: datetime | None = None
    lightest: float | None = None  # the smallest and largest row weight, when the rows carry weights
    heaviest: float | None = None
    edits: int = 0  # written answers that gave rows (annotate/data/exports/edits.py)
    edit_rows: int = 0
    _verdict_kinds: dict[tuple[Any, ...], int] = field(default_factory=dict, repr=False, compare=False)
    _last_prompt: list[Any] | None = field(default=None, repr=False, compare=False)
    _last_multi_turn: bool = field(default=False, repr=False, compare=False)

    def edit_row(self, row: dict[str, Any]) -> None:
        self.rows += 1
        self.edit_rows += 1
        if WEIGHT_COLUMN.name in row:
            self.weigh(row[WEIGHT_COLUMN.name])

    def weigh(self, weight: float) -> None:
        self.lightest = weight if self.lightest is None else min(self.lightest, weight)
        self.heaviest = weight if self.heaviest is None else max(self.heaviest, weight)

    def add(self, verdict: ExportVerdict) -> None:
        # A verdict is counted by what the card counts of it (outcome, answers, multi-turn), and the counts go into
        # the counters in finish: one dict update a verdict instead of six counter updates.
        pair = verdict.pair
        if pair.prompt is not self._last_prompt:  # a pair's verdicts share their prompt
            self._last_prompt, self._last_multi_turn = pair.prompt, is_multi_turn(pair.prompt)
        kind = (verdict.outcome, pair.completion_a_version, pair.completion_a_sampling, pair.completion_b_version,
                pair.completion_b_sampling, self._last_multi_turn)  # fmt: skip
        self._verdict_kinds[kind] = self._verdict_kinds.get(kind, 0) + 1
        for vote in verdict.judgements:
            self.sources[vote.source] += 1
            if vote.source == Judgement.Source.IMPORTED:
                self.imported_from[vote.source_detail] += 1
            # Compared as read (on SQLite naive datetimes, all UTC): they sort as the times do.
            if self.first_vote is None or vote.created_at < self.first_vote:
                self.first_vote = vote.created_at
            if self.last_vote is None or vote.created_at > self.last_vote:
                self.last_vote = vote.created_at

    def finish(self, vote_time: VoteTime) -> None:
        """The verdicts counted, and the first and last vote's times as datetimes (they were kept as read)."""
        for (outcome, a_version, a_sampling, b_version, b_sampling, multi_turn), count in self._verdict_kinds.items():
            self.verdicts += count
            self.outcomes[outcome] += count
            self.answers_by_version[a_version] += count
            self.answers_by_version[b_version] += count
            self.answers_by_sampling[a_sampling] += count
            self.answers_by_sampling[b_sampling] += count
            self.multi_turn += count if multi_turn else 0
        self._verdict_kinds.clear()
        self.first_vote = None if self.first_vote is None else vote_time(self.first_vote)
        self.last_vote = None if self.last_vote is None else vote_time(self.last_vote)


def _counted(
    chunks: Iterator[list[tuple[Any, ...]]], stats: ExportStats, on_progress: Progress | None
) -> Iterator[tuple[Any, ...]]:
    for chunk in chunks:
        stats.votes_read += len(chunk)
        stats.rankings_read += sum(1 for row in chunk if row[_RANKING] is not None)
        if on_progress is not None:
            on_progress(len(chunk))
        yield from chunk


def export_write(
    *, dataset_format: str, file_format: str, filters: ExportFilters, path: Path, on_progress: Progress | None = None
) -> ExportStats:
    """Stream the matching votes into `path` as rows of the format. Writes beside it and renames when complete,
    so a failed export never leaves half a file under the final name."""
    spec = FORMATS[dataset_format]
    weighted = filters.weighted
    left_out, competence = filters.rules.left_out_and_competence(judgements_matching(filters), filters.weighting)
    if weighted:
        spec = spec.with_weights()
    stats = ExportStats()
    rows = VoteRows(votes_to_export(filters, left_out), READ_CHUNK)
    weights = PairWeights.for_rules(filters.weighting, competence, filters.rules) if weighted else None
    context = RowContext(weights, rows.vote_time)
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = open_writer(file_format, partial, spec.schema)
    build_rows, write = spec.rows, writer.write
    choices = filters.rules.choices_train  # else only written answers give rows (rule edits: edits_only)
    try:
        try:
            extra_answers = ExtraAnswers()
            counted = _counted(extra_answers.read_for(rows.chunks()), stats, on_progress)
            verdicts = export_verdicts(
                counted, spec.rules(filters.rules), extra_answers, whole_rankings=spec.whole_rankings
            )
            for verdict in verdicts:
                if not choices:
                    continue
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
            stats.edits = edit_rows_write(
                dataset_format=dataset_format,
                filters=filters,
                left_out=left_out,
                context=context,
                write=write,
                on_row=stats.edit_row,
            )
        finally:
            writer.close()
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    stats.finish(rows.vote_time)
    return stats
