"""Taking data out: preference data sets in the shapes TRL, Chatbot Arena and HH-RLHF use, each with a dataset card.

Exports stream: votes are read in chunks (QuerySet.iterator), combined pair by pair under PreferenceRules
(annotate.preferences, the same rules training rounds use), and written row by row (JSON Lines) or in record batches
(Parquet), so memory stays flat however many votes there are. Every data file gets a dataset card beside it (the same
name ending in .md): counts, filters, schema, how votes became rows, model versions, date range and licence.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import F, QuerySet
from django.utils import timezone

from annotate.models import Export, Judgement, ModelVersion, Pair, Prompt
from annotate.preferences import (
    DECISIVE,
    PreferenceRules,
    Verdict,
    assistant,
    judgements_for_preferences,
    trl_preference_row,
    verdicts,
)

logger = logging.getLogger(__name__)

DATASET_FORMATS = ("trl-preference", "trl-unpaired", "arena", "hh-rlhf")
FILE_FORMATS = ("jsonl", "parquet")
SOURCES = tuple(Judgement.Source.values)
READ_CHUNK = 2000  # votes fetched from the database at a time
PARQUET_BATCH = 5000  # rows per Parquet record batch (and row group)
Row = dict[str, Any]
Progress = Callable[[int], None]

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


# --- What an export asks for -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFilters:
    """Which votes go in and how they are combined. Names, not ids, so a stored export reads on its own."""

    date_from: date | None = None  # votes cast on or after this day (UTC)
    date_to: date | None = None  # votes cast on or before this day (UTC)
    prompt_sets: tuple[str, ...] = ()
    model_versions: tuple[str, ...] = ()  # pairs sampled from these versions
    annotators: tuple[str, ...] = ()  # usernames
    sources: tuple[str, ...] = ()  # human, simulated, imported
    on_policy: bool = False  # both answers from the version that served when the pair was sampled
    rules: PreferenceRules = field(default_factory=PreferenceRules)
    license: str = ""  # not a filter: the licence the dataset card states

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> ExportFilters:
        """From validated form, serializer or command-line values named like the fields (rules flattened)."""
        return cls(
            date_from=values["date_from"],
            date_to=values["date_to"],
            prompt_sets=tuple(values["prompt_sets"]),
            model_versions=tuple(values["model_versions"]),
            annotators=tuple(values["annotators"]),
            sources=tuple(values["sources"]),
            on_policy=values["on_policy"],
            rules=PreferenceRules(
                combine=values["combine"],
                include_ties=values["include_ties"],
                include_both_bad=values["include_both_bad"],
                min_agreement=values["min_agreement"],
            ),
            license=values["license"],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "date_from": self.date_from.isoformat() if self.date_from else None,
            "date_to": self.date_to.isoformat() if self.date_to else None,
            "prompt_sets": list(self.prompt_sets),
            "model_versions": list(self.model_versions),
            "annotators": list(self.annotators),
            "sources": list(self.sources),
            "on_policy": self.on_policy,
            **self.rules.as_dict(),
            "license": self.license,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportFilters:
        def day(value: str | None) -> date | None:
            return date.fromisoformat(value) if value else None

        return cls(
            date_from=day(data.get("date_from")),
            date_to=day(data.get("date_to")),
            prompt_sets=tuple(data.get("prompt_sets", ())),
            model_versions=tuple(data.get("model_versions", ())),
            annotators=tuple(data.get("annotators", ())),
            sources=tuple(data.get("sources", ())),
            on_policy=bool(data.get("on_policy", False)),
            rules=PreferenceRules(
                combine=data.get("combine", "majority"),
                include_ties=bool(data.get("include_ties", False)),
                include_both_bad=bool(data.get("include_both_bad", False)),
                min_agreement=float(data.get("min_agreement", 0.0)),
            ),
            license=data.get("license", ""),
        )


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


def judgements_matching(filters: ExportFilters) -> QuerySet[Judgement]:
    """The votes an export reads, before they are combined."""
    judgements = Judgement.objects.all()
    if filters.date_from:
        judgements = judgements.filter(created_at__gte=_day_start(filters.date_from))
    if filters.date_to:
        judgements = judgements.filter(created_at__lt=_day_start(filters.date_to + timedelta(days=1)))
    if filters.prompt_sets:
        judgements = judgements.filter(pair__prompt__prompt_set__in=filters.prompt_sets)
    if filters.model_versions:
        judgements = judgements.filter(pair__sampled_from__name__in=filters.model_versions)
    if filters.annotators:
        judgements = judgements.filter(annotator__username__in=filters.annotators)
    if filters.sources:
        judgements = judgements.filter(source__in=filters.sources)
    if filters.on_policy:
        judgements = judgements.filter(
            pair__completion_a__model_version=F("pair__sampled_from"),
            pair__completion_b__model_version=F("pair__sampled_from"),
        ).exclude(pair__sampled_from__status=ModelVersion.Status.EXTERNAL)
    return judgements


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


def _unknown(wanted: Iterable[str], known: Iterable[str]) -> list[str]:
    return sorted(set(wanted) - set(known))


def export_errors(*, dataset_format: str, file_format: str, filters: ExportFilters) -> dict[str, str]:
    """What is wrong with an export request, by field; empty when it can run."""
    errors = {}
    if dataset_format not in DATASET_FORMATS:
        errors["dataset_format"] = f"must be one of {', '.join(DATASET_FORMATS)}"
    if file_format not in FILE_FORMATS:
        errors["file_format"] = f"must be one of {', '.join(FILE_FORMATS)}"
    if filters.date_from and filters.date_to and filters.date_from > filters.date_to:
        errors["date_to"] = "is before date_from"
    known = {
        "prompt_sets": Prompt.objects.filter(prompt_set__in=filters.prompt_sets).values_list("prompt_set", flat=True),
        "model_versions": ModelVersion.objects.filter(name__in=filters.model_versions).values_list("name", flat=True),
        "annotators": User.objects.filter(username__in=filters.annotators).values_list("username", flat=True),
    }
    for name, found in known.items():
        wanted: tuple[str, ...] = getattr(filters, name)
        unknown = _unknown(wanted, found.distinct()) if wanted else []
        if unknown:
            errors[name] = f"unknown: {', '.join(unknown)}"
    unknown_sources = _unknown(filters.sources, SOURCES)
    if unknown_sources:
        errors["sources"] = f"unknown: {', '.join(unknown_sources)} (use {', '.join(SOURCES)})"
    return errors


# --- Rows ------------------------------------------------------------------------------------------------------


class RowContext:
    """What rows need beyond the votes: version names (few, read once) and the judge pseudonyms' key."""

    def __init__(self) -> None:
        self.version_names: dict[int, str] = dict(ModelVersion.objects.values_list("id", "name"))
        self._key = settings.SECRET_KEY.encode()
        self._judges: dict[str, str] = {}  # one entry per annotator or imported file

    def name(self, version_id: int) -> str:
        return self.version_names[version_id]

    def judge(self, vote: Judgement) -> str:
        """A stable pseudonym: the same annotator (or imported file) always gets the same one, never the name."""
        subject = f"user:{vote.annotator_id}" if vote.annotator_id else f"import:{vote.source_detail}"
        if subject not in self._judges:
            digest = hmac.new(self._key, subject.encode(), hashlib.sha256).hexdigest()[:16]
            self._judges[subject] = f"{'judge' if vote.annotator_id else 'imported'}_{digest}"
        return self._judges[subject]


def is_on_policy(pair: Pair) -> bool:
    version = pair.sampled_from
    return (
        version.status != ModelVersion.Status.EXTERNAL
        and pair.completion_a.model_version_id == version.pk
        and pair.completion_b.model_version_id == version.pk
    )


def margin(strength: float | None) -> float:
    """Strength of preference on TRL's reward margin scale: slightly 1/3, clearly 2/3, much better 1; unknown 0."""
    return round(strength / 3, 4) if strength is not None else 0.0


def _sources(verdict: Verdict) -> str:
    return "+".join(sorted({vote.source for vote in verdict.judgements}))


def _paired_lineage(verdict: Verdict, context: RowContext) -> Row:
    pair = verdict.pair
    chosen, rejected = (
        (pair.completion_a, pair.completion_b)
        if verdict.outcome == Judgement.Choice.A
        else (pair.completion_b, pair.completion_a)
    )
    return {
        "pair_id": pair.pk,
        "prompt_id": pair.prompt_id,
        "prompt_set": pair.prompt.prompt_set,
        "chosen_model": context.name(chosen.model_version_id),
        "rejected_model": context.name(rejected.model_version_id),
        "sampled_from": pair.sampled_from.name,
        "on_policy": is_on_policy(pair),
        "votes": verdict.votes,
        "agreement": round(verdict.agreement, 4),
        "source": _sources(verdict),
    }


def trl_preference_rows(verdict: Verdict, context: RowContext) -> Iterator[Row]:
    if verdict.outcome in DECISIVE:
        yield {**trl_preference_row(verdict), "margin": margin(verdict.strength), **_paired_lineage(verdict, context)}


_KTO_LABELS = {"a": (True, False), "b": (False, True), "both_bad": (False, False)}


def trl_unpaired_rows(verdict: Verdict, context: RowContext) -> Iterator[Row]:
    labels = _KTO_LABELS.get(verdict.outcome)
    if labels is None:
        return  # a tie says neither answer is good or bad
    pair = verdict.pair
    for completion, label in zip((pair.completion_a, pair.completion_b), labels, strict=True):
        yield {
            "prompt": pair.prompt.messages,
            "completion": assistant(completion.text),
            "label": label,
            "pair_id": pair.pk,
            "prompt_id": pair.prompt_id,
            "prompt_set": pair.prompt.prompt_set,
            "completion_id": completion.pk,
            "model": context.name(completion.model_version_id),
            "verdict": verdict.outcome,
            "votes": verdict.votes,
            "agreement": round(verdict.agreement, 4),
            "source": _sources(verdict),
        }


ARENA_WINNERS = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}


def arena_rows(verdict: Verdict, context: RowContext) -> Iterator[Row]:
    pair, prompt = verdict.pair, verdict.pair.prompt.messages
    for vote in verdict.judgements:  # one vote per verdict: arena exports combine with "all"
        yield {
            "question_id": str(pair.pk),
            "model_a": context.name(pair.completion_a.model_version_id),
            "model_b": context.name(pair.completion_b.model_version_id),
            "winner": ARENA_WINNERS[vote.choice],
            "judge": context.judge(vote),
            "conversation_a": [*prompt, *assistant(pair.completion_a.text)],
            "conversation_b": [*prompt, *assistant(pair.completion_b.text)],
            "turn": sum(1 for message in prompt if message["role"] == "user"),
            "anony": True,
            "tstamp": vote.created_at.timestamp(),
        }


_HH_SPEAKERS = {"user": "Human", "assistant": "Assistant"}


def hh_transcript(prompt: list[dict[str, str]], answer: str) -> str:
    turns = [message for message in prompt if message["role"] in _HH_SPEAKERS]  # HH-RLHF has no system turn
    return "".join(f"\n\n{_HH_SPEAKERS[m['role']]}: {m['content']}" for m in turns) + f"\n\nAssistant: {answer}"


def hh_rlhf_rows(verdict: Verdict, context: RowContext) -> Iterator[Row]:
    if verdict.chosen is None or verdict.rejected is None:
        return
    prompt = verdict.pair.prompt.messages
    yield {
        "chosen": hh_transcript(prompt, verdict.chosen),
        "rejected": hh_transcript(prompt, verdict.rejected),
        **_paired_lineage(verdict, context),
    }


# --- Formats: columns, row builders, and what the card says about them -----------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    meaning: str


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    use: str
    columns: tuple[Column, ...]
    rows: Callable[[Verdict, RowContext], Iterator[Row]]
    mapping: str
    one_row_per_vote: bool = False

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(column.name, column.type) for column in self.columns])

    def rules(self, rules: PreferenceRules) -> PreferenceRules:
        return replace(rules, combine="all") if self.one_row_per_vote else rules


_PAIRED_LINEAGE = (
    Column("pair_id", pa.int64(), "the pair in pairloop"),
    Column("prompt_id", pa.int64(), "the prompt in pairloop"),
    Column("prompt_set", pa.string(), "the prompt's set"),
    Column("chosen_model", pa.string(), "model version of the chosen answer"),
    Column("rejected_model", pa.string(), "model version of the rejected answer"),
    Column("sampled_from", pa.string(), "version serving when the pair was sampled (imported:FORMAT for imports)"),
    Column("on_policy", pa.bool_(), "both answers from sampled_from, a version that served"),
    Column("votes", pa.int64(), "votes on the pair that passed the filters"),
    Column("agreement", pa.float64(), "share of those votes that agree with this row"),
    Column("source", pa.string(), "who voted: human, simulated or imported (joined with + when mixed)"),
)

FORMATS = {
    "trl-preference": DatasetFormat(
        name="trl-preference",
        use="TRL `DPOTrainer` and `RewardTrainer` (conversational preference format)",
        columns=(
            Column("prompt", MESSAGES, "the conversation answered, ending with the user's turn"),
            Column("chosen", MESSAGES, "the preferred answer: one assistant message"),
            Column("rejected", MESSAGES, "the other answer: one assistant message"),
            Column("margin", pa.float64(), "how strongly: 1/3 slightly, 2/3 clearly, 1 much better; 0 unknown"),
            *_PAIRED_LINEAGE,
        ),
        rows=trl_preference_rows,
        mapping=(
            "One row per verdict where one answer won (A or B): the winner is `chosen`. Tie and both-bad verdicts "
            "have no chosen answer and are left out whatever the filters say. `margin` is the mean strength of the "
            "votes for the winner divided by 3 (imported votes carry no strength: 0), the scale `RewardTrainer` "
            "adds to its loss; DPO ignores it."
        ),
    ),
    "trl-unpaired": DatasetFormat(
        name="trl-unpaired",
        use="TRL `KTOTrainer` (conversational unpaired preference format)",
        columns=(
            Column("prompt", MESSAGES, "the conversation answered, ending with the user's turn"),
            Column("completion", MESSAGES, "one answer: one assistant message"),
            Column("label", pa.bool_(), "true: a desirable answer; false: an undesirable one"),
            Column("pair_id", pa.int64(), "the pair in pairloop"),
            Column("prompt_id", pa.int64(), "the prompt in pairloop"),
            Column("prompt_set", pa.string(), "the prompt's set"),
            Column("completion_id", pa.int64(), "the answer in pairloop"),
            Column("model", pa.string(), "model version of the answer"),
            Column("verdict", pa.string(), "the pair's verdict: a, b or both_bad"),
            Column("votes", pa.int64(), "votes on the pair that passed the filters"),
            Column("agreement", pa.float64(), "share of those votes that agree with the verdict"),
            Column("source", pa.string(), "who voted: human, simulated or imported (joined with + when mixed)"),
        ),
        rows=trl_unpaired_rows,
        mapping=(
            "Two rows per verdict: A-or-B verdicts give the winner `label: true` and the loser `label: false`; "
            "both-bad verdicts (when included) give two `false` rows. Ties say nothing about either answer and are "
            "left out."
        ),
    ),
    "arena": DatasetFormat(
        name="arena",
        use="Chatbot Arena battle format (`lmsys/chatbot_arena_conversations`), e.g. for Elo or Bradley-Terry ratings",
        columns=(
            Column("question_id", pa.string(), "the pair in pairloop (votes on the same pair share it)"),
            Column("model_a", pa.string(), "model version of answer A"),
            Column("model_b", pa.string(), "model version of answer B"),
            Column("winner", pa.string(), "model_a, model_b, tie or tie (bothbad)"),
            Column("judge", pa.string(), "a stable pseudonym of the annotator (HMAC of their id), or of the import"),
            Column("conversation_a", MESSAGES, "the prompt followed by answer A"),
            Column("conversation_b", MESSAGES, "the prompt followed by answer B"),
            Column("turn", pa.int64(), "user turns in the conversation"),
            Column("anony", pa.bool_(), "annotators never see which model wrote an answer: always true"),
            Column("tstamp", pa.float64(), "when the vote was cast (Unix time)"),
        ),
        rows=arena_rows,
        one_row_per_vote=True,
        mapping=(
            "One row per vote, whatever the combine rule (battles are votes); ties and both-bad votes are kept "
            "only when the filters include them, and minimum agreement applies to each vote's share of its pair. "
            "A and B are the pair's own labels, not the sides of the screen (those were random per annotator)."
        ),
    ),
    "hh-rlhf": DatasetFormat(
        name="hh-rlhf",
        use='Anthropic HH-RLHF transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...")',
        columns=(
            Column("chosen", pa.string(), "the whole transcript ending with the preferred answer"),
            Column("rejected", pa.string(), "the whole transcript ending with the other answer"),
            *_PAIRED_LINEAGE,
        ),
        rows=hh_rlhf_rows,
        mapping=(
            "One row per verdict where one answer won, as two transcripts that share every turn but the last. "
            "HH-RLHF has no system turn: system messages are left out of the transcripts. Tie and both-bad "
            "verdicts are left out."
        ),
    ),
}


# --- Writing ---------------------------------------------------------------------------------------------------


class RowWriter(Protocol):
    def write(self, row: Row) -> None: ...
    def close(self) -> None: ...


class JsonLinesWriter:
    def __init__(self, path: Path) -> None:
        self._file = path.open("w", encoding="utf-8")

    def write(self, row: Row) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._file.close()


class ParquetBatchWriter:
    """Rows buffered into record batches of `batch_rows`, each written as it fills."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int | None = None) -> None:
        self._schema = schema
        self._batch_rows = batch_rows or PARQUET_BATCH
        self._rows: list[Row] = []
        self._writer = pq.ParquetWriter(str(path), schema)

    def write(self, row: Row) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def open_writer(file_format: str, path: Path, schema: pa.Schema) -> RowWriter:
    return ParquetBatchWriter(path, schema) if file_format == "parquet" else JsonLinesWriter(path)


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


# --- Dataset card ----------------------------------------------------------------------------------------------


def card_path(data_path: Path) -> Path:
    return data_path.with_suffix(".md")


def _filter_lines(filters: ExportFilters, spec: DatasetFormat) -> list[tuple[str, str]]:
    def listed(values: tuple[str, ...]) -> str:
        return ", ".join(values) if values else "any"

    rules = spec.rules(filters.rules)
    return [
        ("votes cast from", filters.date_from.isoformat() if filters.date_from else "the beginning"),
        ("votes cast until", filters.date_to.isoformat() if filters.date_to else "now"),
        ("prompt sets", listed(filters.prompt_sets)),
        ("pairs sampled from", listed(filters.model_versions)),
        ("annotators", f"{len(filters.annotators)} named" if filters.annotators else "any"),
        ("sources", listed(filters.sources)),
        ("on-policy pairs only", "yes" if filters.on_policy else "no"),
        ("several votes on a pair", rules.combine + (" (one row per vote)" if spec.one_row_per_vote else "")),
        ("ties", "included" if rules.include_ties else "left out"),
        ("both bad", "included" if rules.include_both_bad else "left out"),
        ("minimum agreement", f"{rules.min_agreement:g}"),
    ]


_COMBINE_RULES = {
    "majority": "one verdict per pair: its most common vote; a draw between outcomes gives no verdict",
    "all": "one verdict per vote",
    "unanimous": "one verdict per pair whose votes all agree; other pairs give none",
}


def _table(header: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]


def _arrow_type(data_type: pa.DataType) -> str:
    return "list of {role, content} messages" if data_type == MESSAGES else str(data_type)


def dataset_card(
    *,
    title: str,
    dataset_format: str,
    file_format: str,
    filters: ExportFilters,
    stats: ExportStats,
    data_file: str,
    created: datetime,
    created_by: str,
) -> str:
    """The Markdown card written beside an export (YAML front matter as the Hugging Face Hub reads it)."""
    spec = FORMATS[dataset_format]
    licence = filters.license or settings.EXPORT_LICENSE or "unknown"
    versions = ModelVersion.objects.filter(pk__in=list(stats.answers_by_version)).select_related("parent")
    loader = "json" if file_format == "jsonl" else "parquet"
    span = (
        f"{stats.first_vote:%Y-%m-%d %H:%M} to {stats.last_vote:%Y-%m-%d %H:%M} UTC"
        if stats.first_vote and stats.last_vote
        else "no votes"
    )
    lines = [
        "---",
        f"license: {licence}",
        f"pretty_name: {json.dumps(title)}",
        "tags: [pairloop, preference, human-feedback, " + ("dpo]" if dataset_format != "arena" else "arena]"),
        "---",
        "",
        f"# {title}",
        "",
        f"Human preference data from pairloop, in the `{dataset_format}` format: {spec.use}. "
        f"File: `{data_file}` ({'JSON Lines' if file_format == 'jsonl' else 'Parquet'}).",
        "",
        "```python",
        "from datasets import load_dataset",
        f'dataset = load_dataset("{loader}", data_files="{data_file}", split="train")',
        "```",
        "",
        "## Contents",
        "",
        *_table(
            ("", ""),
            [
                ("rows", f"{stats.rows:,}"),
                ("verdicts (pairs, or votes when one row per vote)", f"{stats.verdicts:,}"),
                ("votes read (after the filters)", f"{stats.votes_read:,}"),
                ("verdicts by outcome", _counts(stats.outcomes) or "none"),
                ("left out: no row in this format", _counts(stats.left_out) or "none"),
                ("votes behind the rows, by source", _counts(stats.sources) or "none"),
                ("date range of those votes", span),
                ("exported", f"{created:%Y-%m-%d %H:%M} UTC by {created_by}"),
            ],
        ),
        "",
        "## Filters",
        "",
        *_table(("filter", "value"), _filter_lines(filters, spec)),
        "",
        "## How votes became rows",
        "",
        f"Votes on a pair are combined as `{spec.rules(filters.rules).combine}`: "
        f"{_COMBINE_RULES[spec.rules(filters.rules).combine]}. Verdicts below the minimum agreement are dropped.",
        "",
        spec.mapping,
        "",
        "Answers are stored relative to the pair (A and B), never to the screen; annotators saw them on random sides.",
        "",
        "## Schema",
        "",
        *_table(("column", "type", "meaning"), [(c.name, _arrow_type(c.type), c.meaning) for c in spec.columns]),
        "",
        "## Model versions",
        "",
        *_table(
            ("version", "status", "base model", "adapter", "parent", "answers in the data"),
            [
                (
                    v.name,
                    v.status,
                    v.base_model,
                    v.adapter_path or "-",
                    v.parent.name if v.parent else "-",
                    f"{stats.answers_by_version[v.pk]:,}",
                )
                for v in versions
            ],
        ),
        "",
        "## Licence",
        "",
        f"license: {licence}",
        "",
    ]
    if stats.imported_from:
        lines += [
            "Some votes were imported (their time is the time of the import), and their own licence and terms "
            "apply to them:",
            "",
            *[f"- {detail}: {count:,} votes" for detail, count in sorted(stats.imported_from.items())],
            "",
        ]
    return "\n".join(lines).rstrip("\n") + "\n"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key}: {count:,}" for key, count in sorted(counter.items()))


# --- Services: the Export record -------------------------------------------------------------------------------


class InvalidExport(Exception):
    """An export request that cannot run; `errors` names the fields. Nothing was recorded."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))
        self.errors = errors


def export_create(
    *,
    created_by: User | None,
    dataset_format: str,
    file_format: str,
    filters: ExportFilters,
    max_votes: int | None = None,
) -> Export:
    """Record an export to run; InvalidExport when the request is wrong or matches more than max_votes votes."""
    errors = export_errors(dataset_format=dataset_format, file_format=file_format, filters=filters)
    if not errors and max_votes is not None:
        count = judgements_matching(filters).count()
        if count > max_votes:
            errors["filters"] = (
                f"{count:,} votes match; exports over {max_votes:,} votes (EXPORT_WEB_MAX_VOTES) "
                "run with `manage.py export_preferences`"
            )
    if errors:
        raise InvalidExport(errors)
    return Export.objects.create(
        created_by=created_by, dataset_format=dataset_format, file_format=file_format, filters=filters.as_dict()
    )


def export_default_path(export: Export) -> Path:
    return Path(settings.EXPORT_DIR) / f"export-{export.pk}-{export.dataset_format}.{export.file_format}"


def export_run(*, export: Export, path: Path | None = None, on_progress: Progress | None = None) -> Export:
    """Write the export's data file and its card, recording the outcome on the Export. Runs once per export:
    an export already started elsewhere is returned as it is."""
    path = (path or export_default_path(export)).resolve()
    started = Export.objects.filter(pk=export.pk, status=Export.Status.QUEUED).update(
        status=Export.Status.RUNNING, path=str(path)
    )
    if started != 1:
        export.refresh_from_db()
        return export
    filters = ExportFilters.from_dict(export.filters)
    try:
        stats = export_write(
            dataset_format=export.dataset_format,
            file_format=export.file_format,
            filters=filters,
            path=path,
            on_progress=on_progress,
        )
        card = dataset_card(
            title=f"pairloop export {export.pk}: {export.dataset_format}",
            dataset_format=export.dataset_format,
            file_format=export.file_format,
            filters=filters,
            stats=stats,
            data_file=path.name,
            created=timezone.now(),
            created_by=export.created_by.get_username() if export.created_by else "manage.py export_preferences",
        )
        card_path(path).write_text(card, encoding="utf-8")
    except BaseException as error:
        logger.exception("export %s (%s to %s) failed", export.pk, export.dataset_format, path)
        Export.objects.filter(pk=export.pk).update(
            status=Export.Status.FAILED, error=f"{type(error).__name__}: {error}", finished_at=timezone.now()
        )
        if not isinstance(error, Exception):
            raise
    else:
        Export.objects.filter(pk=export.pk).update(
            status=Export.Status.DONE, row_count=stats.rows, finished_at=timezone.now()
        )
    export.refresh_from_db()
    return export


def export_files(export: Export) -> dict[str, Path]:
    """The data file and the card of a finished export, where they still exist."""
    if export.status != Export.Status.DONE or not export.path:
        return {}
    data = Path(export.path)
    found = {"data": data, "card": card_path(data)}
    return {name: path for name, path in found.items() if path.is_file()}
